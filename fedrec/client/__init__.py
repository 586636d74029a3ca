"""The device side: the on-device trainer, the embeddable client, its store, and the messages.

``fedrec.client.trainer`` knows nothing of Flower; ``fedrec.client.app`` adapts it to a Flower
ClientApp. An app embeds :class:`FedrecClient` (one user, one SQLite store, consent, export,
erasure, privacy report). Nothing here imports ``fedrec.server``, Ray or hydra, and nothing but
``fedrec.client.app`` and ``fedrec.client.device_state`` imports Flower.
"""

from fedrec.client.consent import CATEGORIES, ConsentRequired, ConsentStatus
from fedrec.client.local_client import ClientUpdate, FedrecClient, NothingToTrain
from fedrec.client.messages import RoundRefused, RoundSettings, parse_round_config, round_config
from fedrec.client.recommend import Explanation, Recommendation
from fedrec.client.rights import DeletionReport, PrivacyReport, parse_export
from fedrec.client.store import LocalStore, StoreError
from fedrec.client.trainer import (
    DeviceState,
    LocalData,
    LocalEvalSpec,
    LocalTrainingSpec,
    RoundResult,
    evaluate_user,
    train_round,
)

__all__ = [
    "CATEGORIES",
    "ClientUpdate",
    "ConsentRequired",
    "ConsentStatus",
    "DeletionReport",
    "DeviceState",
    "Explanation",
    "FedrecClient",
    "LocalData",
    "LocalEvalSpec",
    "LocalStore",
    "LocalTrainingSpec",
    "NothingToTrain",
    "PrivacyReport",
    "Recommendation",
    "RoundRefused",
    "RoundResult",
    "RoundSettings",
    "StoreError",
    "evaluate_user",
    "parse_export",
    "parse_round_config",
    "round_config",
    "train_round",
]
