"""The device side: the on-device trainer, its state, and the message schema.

``fedrec.client.trainer`` knows nothing of Flower; ``fedrec.client.app`` adapts it to a Flower
ClientApp. Nothing here imports ``fedrec.server``, Ray or hydra.
"""

from fedrec.client.messages import RoundRefused, RoundSettings, parse_round_config, round_config
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
    "DeviceState",
    "LocalData",
    "LocalEvalSpec",
    "LocalTrainingSpec",
    "RoundRefused",
    "RoundResult",
    "RoundSettings",
    "evaluate_user",
    "parse_round_config",
    "round_config",
    "train_round",
]
