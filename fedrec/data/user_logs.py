"""One log per user: the structure a client holds on its own device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.log import InteractionLog


@dataclass(frozen=True)
class UserLog:
    """One user's interactions, in the order they happened (file order without timestamps)."""

    user: int
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None

    def __len__(self) -> int:
        return len(self.items)


def user_row_groups(log: InteractionLog) -> list[np.ndarray]:
    """Row indices of each user's interactions, chronological, indexed by dense user id.

    Stable sorting keeps file order among equal timestamps, so "latest" is well defined: of two
    rows with the same timestamp, the later one in the file counts as later.
    """
    within = np.arange(len(log)) if log.timestamps is None else log.timestamps
    order = np.lexsort((np.arange(len(log)), within, log.users))
    counts = np.bincount(log.users, minlength=log.num_users)
    return np.split(order, np.cumsum(counts)[:-1])


def split_by_user(log: InteractionLog) -> list[UserLog]:
    """Partition a log into per-user logs, indexed by dense user id."""
    return [
        UserLog(
            user=user,
            items=log.items[rows],
            ratings=None if log.ratings is None else log.ratings[rows],
            timestamps=None if log.timestamps is None else log.timestamps[rows],
        )
        for user, rows in enumerate(user_row_groups(log))
    ]
