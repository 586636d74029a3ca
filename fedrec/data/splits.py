"""Train/test splits per user, with the fixed negatives every method is scored against.

Each split function marks which rows of a log are test rows; ``make_split`` then draws the sampled-
metric negatives once, by seed, and stores them with the split, so every method (centralized,
federated, peers) ranks exactly the same candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.errors import DataError
from fedrec.data.log import InteractionLog
from fedrec.data.user_logs import user_row_groups
from fedrec.registry import Registry

SplitRule = Callable[[InteractionLog, np.random.Generator, float], np.ndarray]
SPLITS: Registry[SplitRule] = Registry("split")


@dataclass(frozen=True)
class Split:
    """A train and a test log over one id space, and the sampled-metric negatives.

    ``negative_users[j]`` is a test user and ``negatives[j]`` its candidate items that the user
    never interacted with (train or test); ``test_users`` lists every user with a test row.
    """

    train: InteractionLog
    test: InteractionLog
    negative_users: np.ndarray
    negatives: np.ndarray
    name: str
    seed: int

    @property
    def test_users(self) -> np.ndarray:
        return np.unique(self.test.users)

    def negatives_of(self, user: int) -> np.ndarray:
        row = np.searchsorted(self.negative_users, user)
        if row >= len(self.negative_users) or self.negative_users[row] != user:
            raise KeyError(f"user {user} has no test interactions in this split")
        return self.negatives[row]

    def save(self, path: str | Path) -> None:
        """Store the split as ``.npz`` (no pickle: a split file is data, never code)."""
        arrays = {
            "name": np.asarray(self.name),
            "seed": np.asarray(self.seed),
            "negative_users": self.negative_users,
            "negatives": self.negatives,
            "user_ids": self.train.user_ids,
            "item_ids": self.train.item_ids,
        }
        for part, log in (("train", self.train), ("test", self.test)):
            arrays[f"{part}_users"] = log.users
            arrays[f"{part}_items"] = log.items
            if log.ratings is not None:
                arrays[f"{part}_ratings"] = log.ratings
            if log.timestamps is not None:
                arrays[f"{part}_timestamps"] = log.timestamps
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Split:
        with np.load(path, allow_pickle=False) as stored:

            def part(name: str) -> InteractionLog:
                return InteractionLog(
                    users=stored[f"{name}_users"],
                    items=stored[f"{name}_items"],
                    ratings=stored.get(f"{name}_ratings"),
                    timestamps=stored.get(f"{name}_timestamps"),
                    user_ids=stored["user_ids"],
                    item_ids=stored["item_ids"],
                    source=str(path),
                )

            return cls(
                part("train"),
                part("test"),
                stored["negative_users"],
                stored["negatives"],
                str(stored["name"]),
                int(stored["seed"]),
            )


def make_split(
    log: InteractionLog,
    name: str = "leave_one_out",
    *,
    seed: int = 0,
    test_ratio: float = 0.2,
    num_negatives: int = 99,
) -> Split:
    """Split ``log`` with the rule registered as ``name`` and draw ``num_negatives`` per test user.

    Users whose log is too short to give up a test row (one interaction) stay in training only
    and are not scored; the split's notes say how many.
    """
    if not 0.0 < test_ratio < 1.0:
        raise ValueError(f"test_ratio={test_ratio}; expected a fraction in (0, 1)")
    if num_negatives < 0:
        raise ValueError(f"num_negatives={num_negatives}; expected >= 0")
    rule = SPLITS.get(name)
    rng = np.random.default_rng(seed)
    is_test = rule(log, rng, test_ratio)
    train, test = log.select(~is_test), log.select(is_test)
    if len(test) == 0:
        raise DataError(f"{log.source}: split '{name}' left no test interactions")
    unscored = log.num_users - len(np.unique(test.users))
    if unscored:
        train = train.with_note(f"{unscored} users with a single interaction are train-only")
    negative_users, negatives = draw_negatives(log, np.unique(test.users), num_negatives, rng)
    return Split(train, test, negative_users, negatives, name, seed)


def draw_negatives(
    log: InteractionLog, users: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct items per user, none of which the user ever interacted with."""
    seen = np.zeros((len(users), log.num_items), dtype=bool)
    row_of_user = np.full(log.num_users, -1, dtype=np.int64)
    row_of_user[users] = np.arange(len(users))
    mine = row_of_user[log.users] >= 0
    seen[row_of_user[log.users[mine]], log.items[mine]] = True
    negatives = np.empty((len(users), count), dtype=np.int64)
    for row, user in enumerate(users):
        unseen = np.flatnonzero(~seen[row])
        if len(unseen) < count:
            raise DataError(
                f"{log.source}: user {log.user_ids[user]!r} has interacted with all but "
                f"{len(unseen)} items; {count} unseen items are needed as sampled-metric negatives"
            )
        negatives[row] = rng.choice(unseen, size=count, replace=False)
    return users.astype(np.int64), negatives


def _require_timestamps(log: InteractionLog, name: str) -> None:
    if log.timestamps is None:
        raise DataError(
            f"{log.source}: split '{name}' needs timestamps and this log has none; use "
            "'random_leave_one_out' (one random held-out interaction per user, the protocol for "
            "logs without time) or 'random_ratio'"
        )


@SPLITS.register("leave_one_out")
def leave_one_out(log: InteractionLog, rng: np.random.Generator, test_ratio: float) -> np.ndarray:
    """Each user's latest interaction is the test item (the NCF protocol)."""
    _require_timestamps(log, "leave_one_out")
    is_test = np.zeros(len(log), dtype=bool)
    for rows in user_row_groups(log):
        if len(rows) >= 2:
            is_test[rows[-1]] = True
    return is_test


@SPLITS.register("random_leave_one_out")
def random_leave_one_out(
    log: InteractionLog, rng: np.random.Generator, test_ratio: float
) -> np.ndarray:
    """One interaction per user, drawn at random by seed, is the test item: leave-one-out for
    logs without timestamps (play counts, likes, ``user item weight`` files)."""
    is_test = np.zeros(len(log), dtype=bool)
    for rows in user_row_groups(log):
        if len(rows) >= 2:
            is_test[rows[rng.integers(len(rows))]] = True
    return is_test


@SPLITS.register("temporal_ratio")
def temporal_ratio(log: InteractionLog, rng: np.random.Generator, test_ratio: float) -> np.ndarray:
    """Each user's latest ``test_ratio`` of interactions (at least one, leaving one to train)."""
    _require_timestamps(log, "temporal_ratio")
    is_test = np.zeros(len(log), dtype=bool)
    for rows in user_row_groups(log):
        if len(rows) >= 2:
            is_test[rows[-_test_count(len(rows), test_ratio) :]] = True
    return is_test


@SPLITS.register("random_ratio")
def random_ratio(log: InteractionLog, rng: np.random.Generator, test_ratio: float) -> np.ndarray:
    """A random ``test_ratio`` of each user's interactions (at least one, leaving one to train)."""
    is_test = np.zeros(len(log), dtype=bool)
    for rows in user_row_groups(log):
        if len(rows) >= 2:
            is_test[rng.choice(rows, size=_test_count(len(rows), test_ratio), replace=False)] = True
    return is_test


def _test_count(size: int, test_ratio: float) -> int:
    return min(size - 1, max(1, math.floor(size * test_ratio + 0.5)))
