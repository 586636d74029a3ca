"""What a device works with in a round: its user's data, its kept state, and a round's result.

Plain numpy: the node logic, the state stores and the app library pass these around without
torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedrec.privacy.ledger import PrivacyLedger


@dataclass
class LocalData:
    """One user's split: what lives on their device. Item ids index the shared table."""

    num_items: int
    train_items: np.ndarray
    train_ratings: np.ndarray | None = None
    test_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    test_ratings: np.ndarray | None = None
    negatives: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("train_items", "test_items"):
            items = getattr(self, name)
            if len(items) and (items.min() < 0 or items.max() >= self.num_items):
                raise ValueError(f"{name} holds ids outside [0, {self.num_items})")


@dataclass
class DeviceState:
    """What a device keeps between rounds: never sent anywhere."""

    user_arrays: dict[str, np.ndarray] | None = None
    ledger: PrivacyLedger | None = None  # created by the first DP round
    rounds_trained: int = 0


@dataclass
class RoundResult:
    item_update: dict[str, np.ndarray]  # new item-side arrays minus the received ones
    state: DeviceState
    loss: float
    steps: int
    sample_rate: float
    epsilon: float  # over the whole run so far, at privacy.delta; 0 without DP


@dataclass
class CohortMember:
    """One user of the cohort: their key (for seeds and reports), data, state and seed."""

    key: int
    data: LocalData
    state: DeviceState
    seed: int | None


@dataclass
class MemberOutcome:
    """What one user's round came to. ``status``: trained, budget_exhausted, rejected, failed."""

    key: int
    status: str
    state: DeviceState
    loss: float = float("nan")
    steps: int = 0
    epsilon: float = 0.0
    reason: str = ""


@dataclass
class CohortRound:
    """The weighted sum of the released item updates, and each user's outcome.

    ``updates`` holds each trained user's own update only when asked for (tests): at ML-1M
    scale they would not fit in memory, and the sum is all the server-side average needs.
    """

    update_sum: dict[str, np.ndarray]
    weight_sum: float
    outcomes: list[MemberOutcome]
    updates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
