"""The interaction log: every later stage (splits, per-user logs, training) reads this one shape."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fedrec.data.errors import DataError

logger = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("keep_latest", "error")


@dataclass(frozen=True)
class InteractionLog:
    """Interactions as parallel arrays over dense ids.

    ``users``/``items`` are dense indices in ``[0, num_users)`` / ``[0, num_items)``; ``user_ids``
    and ``item_ids`` map a dense index back to the raw id of the source, so nothing is lost by
    re-indexing. ``ratings`` and ``timestamps`` are ``None`` when the source has no such column.
    ``notes`` records what loading did to the data (dropped duplicates, ...), for the run summary.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    source: str = "<memory>"
    notes: tuple[str, ...] = field(default=())

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def select(self, rows: np.ndarray) -> InteractionLog:
        """The same id space restricted to some rows (a boolean mask or indices)."""
        return InteractionLog(
            users=self.users[rows],
            items=self.items[rows],
            ratings=None if self.ratings is None else self.ratings[rows],
            timestamps=None if self.timestamps is None else self.timestamps[rows],
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            source=self.source,
            notes=self.notes,
        )

    def with_note(self, note: str) -> InteractionLog:
        logger.info("%s: %s", self.source, note)
        return InteractionLog(
            self.users,
            self.items,
            self.ratings,
            self.timestamps,
            self.user_ids,
            self.item_ids,
            self.source,
            (*self.notes, note),
        )


def build_log(
    raw_users: np.ndarray,
    raw_items: np.ndarray,
    ratings: np.ndarray | None,
    timestamps: np.ndarray | None,
    *,
    source: str,
    on_duplicate: str = "keep_latest",
) -> InteractionLog:
    """Re-index raw ids to dense ints and resolve duplicate (user, item) rows.

    A duplicate pair is a user who rated or viewed the same item twice. ``keep_latest`` keeps the
    row with the latest timestamp (the last one in the file when there are no timestamps), because
    a re-rating replaces the earlier opinion; the number dropped is recorded in ``notes``.
    ``error`` refuses the file instead.
    """
    if on_duplicate not in DUPLICATE_POLICIES:
        raise ValueError(
            f"on_duplicate='{on_duplicate}'; accepted: {', '.join(DUPLICATE_POLICIES)}"
        )
    if len(raw_users) == 0:
        raise DataError(f"{source}: no interactions (the file has no data rows)")
    user_ids, users = np.unique(raw_users, return_inverse=True)
    item_ids, items = np.unique(raw_items, return_inverse=True)
    users = users.astype(np.int64).ravel()
    items = items.astype(np.int64).ravel()

    # Latest occurrence wins: order rows by (user, item, timestamp, file position).
    position = np.arange(len(users))
    keys = [position] if timestamps is None else [position, timestamps]
    order = np.lexsort((*keys, items, users))
    pair_u, pair_i = users[order], items[order]
    last_of_pair = np.ones(len(order), dtype=bool)
    last_of_pair[:-1] = (pair_u[1:] != pair_u[:-1]) | (pair_i[1:] != pair_i[:-1])
    num_duplicates = int(len(order) - last_of_pair.sum())
    notes: tuple[str, ...] = ()
    if num_duplicates:
        first_dup = order[np.flatnonzero(~last_of_pair)[0]]
        where = f"e.g. user {raw_users[first_dup]!r}, item {raw_items[first_dup]!r}"
        if on_duplicate == "error":
            raise DataError(f"{source}: {num_duplicates} duplicate (user, item) rows ({where})")
        notes = (
            f"dropped {num_duplicates} duplicate (user, item) rows, kept the latest ({where})",
        )
        logger.warning("%s: %s", source, notes[0])
    keep = np.sort(order[last_of_pair])  # back to file order
    return InteractionLog(
        users=users[keep],
        items=items[keep],
        ratings=None if ratings is None else np.asarray(ratings, dtype=np.float32)[keep],
        timestamps=None if timestamps is None else np.asarray(timestamps, dtype=np.int64)[keep],
        user_ids=user_ids,
        item_ids=item_ids,
        source=source,
        notes=notes,
    )


def drop_users_without_interactions(log: InteractionLog, reason: str) -> InteractionLog:
    """Re-index users after filtering so that every dense user id has at least one interaction.

    A user with an empty log can neither train nor be evaluated; keeping them would make every
    per-user average silently include zeros. Items keep their index space: an item nobody kept
    is still a candidate to rank.
    """
    present = np.unique(log.users)
    if len(present) == log.num_users:
        return log
    if len(present) == 0:
        raise DataError(f"{log.source}: no user has any interaction left ({reason})")
    remap = np.full(log.num_users, -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    dropped = log.num_users - len(present)
    trimmed = InteractionLog(
        users=remap[log.users],
        items=log.items,
        ratings=log.ratings,
        timestamps=log.timestamps,
        user_ids=log.user_ids[present],
        item_ids=log.item_ids,
        source=log.source,
        notes=log.notes,
    )
    return trimmed.with_note(f"dropped {dropped} users with no interactions ({reason})")
