"""The app teams' library: one user's device, embedded in an app.

An app embeds :class:`FedrecClient` (one user, one SQLite store): it records interactions, asks
for consent per category, trains a round on the item table the server sends and returns the
update to send, recommends and explains on the device, and answers the user's rights (export,
deletion, the privacy report). Everything a round needs is exported here too: the settings the
server sends (:class:`RoundSettings` with :class:`ModelSpec`, :class:`LocalTrainingSpec`,
:class:`PrivacySpec`, :class:`LocalEvalSpec`; :func:`round_config` flattens them into the wire's
config, :func:`parse_round_config` checks it), a seeded initial item table
(:func:`initial_item_arrays`) and the reasons a device refuses a round (:class:`RoundRefused`,
:class:`RefusalReason`).

Nothing here imports Flower, Ray, hydra or the simulation engines; torch and Opacus are
imported only when a round trains or a recommendation is computed.
"""

from fedrec.client.consent import CATEGORIES, ConsentRequired, ConsentStatus
from fedrec.client.local_client import ClientUpdate, FedrecClient, NothingToTrain
from fedrec.client.recommend import Explanation, Recommendation
from fedrec.client.rights import DeletionReport, PrivacyReport, parse_export
from fedrec.client.store import LocalStore, StoreError
from fedrec.lazy import lazy_exports
from fedrec.model.spec import ModelSpec
from fedrec.privacy.ledger import PrivacyBudgetExhausted
from fedrec.privacy.spec import PrivacySpec
from fedrec.protocol.settings import (
    ROUND_CONFIG_DOCS,
    AlsSpec,
    LocalEvalSpec,
    LocalTrainingSpec,
    RoundSettings,
    parse_round_config,
    round_config,
)
from fedrec.protocol.wire import RefusalReason, RoundRefused
from fedrec.training.state import DeviceState, LocalData

__all__ = [
    "CATEGORIES",
    "ROUND_CONFIG_DOCS",
    "AlsSpec",
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
    "ModelSpec",
    "NothingToTrain",
    "PrivacyBudgetExhausted",
    "PrivacyReport",
    "PrivacySpec",
    "Recommendation",
    "RefusalReason",
    "RoundRefused",
    "RoundSettings",
    "StoreError",
    "initial_item_arrays",
    "parse_export",
    "parse_round_config",
    "round_config",
]


def initial_item_arrays(
    num_items: int, embedding_dim: int, *, init_std: float = 0.1, seed: int = 0
) -> dict:
    """A seeded random item table of the shape a device expects: ``item_embedding.weight``
    (num_items × embedding_dim, N(0, init_std²)) and ``item_bias.weight`` (zeros, num_items × 1),
    float32. A server starts from it; it depends on no one's data."""
    from fedrec.model.mf import random_item_arrays

    return random_item_arrays(num_items, embedding_dim, init_std=init_std, seed=seed)


__getattr__ = lazy_exports(__name__, {})
