"""Where a simulated node finds its users' data: users of a split, by position.

A simulation node holds a block of the split's users (:class:`~fedrec.nodes.block.BlockNode`);
a deployed node instead names its user's SQLite store (``store=...`` in the node config) and is
served by :mod:`fedrec.client.device`, so consent and the sent-log apply and no source is
consulted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from fedrec.data.splits import Split
from fedrec.data.user_logs import user_row_groups
from fedrec.training.state import LocalData


class UserDataSource(Protocol):
    def local_data(
        self, node_config: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> tuple[int, LocalData]:
        """(a stable key for this user, used only to derive seeds; the user's data)."""


class SplitUserSource:
    """Node ``partition-id`` p holds user ``users[p]`` of ``split``.

    Built once in the driver and shipped to the simulation's workers with the ClientApp, so
    each worker holds the split's arrays once (not one load per message).
    """

    def __init__(self, split: Split, users: np.ndarray) -> None:
        self.users = np.asarray(users, dtype=np.int64)
        self.num_items = split.train.num_items
        train_rows, test_rows = user_row_groups(split.train), user_row_groups(split.test)
        self._train = [
            (split.train.items[r], None if split.train.ratings is None else split.train.ratings[r])
            for r in (train_rows[u] for u in self.users)
        ]
        self._test = [
            (split.test.items[r], None if split.test.ratings is None else split.test.ratings[r])
            for r in (test_rows[u] for u in self.users)
        ]
        has_negatives = set(split.negative_users.tolist())
        self._negatives = [
            split.negatives_of(u) if u in has_negatives else None for u in self.users
        ]

    def __len__(self) -> int:
        return len(self.users)

    def local_data(
        self, node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
    ) -> tuple[int, LocalData]:
        try:
            partition = int(node_config["partition-id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("node_config needs an integer 'partition-id'") from None
        if not 0 <= partition < len(self.users):
            raise ValueError(f"partition-id {partition} outside [0, {len(self.users)})")
        (train_items, train_ratings), (test_items, test_ratings) = (
            self._train[partition],
            self._test[partition],
        )
        return int(self.users[partition]), LocalData(
            num_items=self.num_items,
            train_items=train_items,
            train_ratings=train_ratings,
            test_items=test_items,
            test_ratings=test_ratings,
            negatives=self._negatives[partition],
        )
