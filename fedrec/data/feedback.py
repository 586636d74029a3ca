"""Implicit vs explicit feedback: what counts as a positive, or what is the regression target."""

from __future__ import annotations

import numpy as np

from fedrec.data.errors import DataError
from fedrec.data.log import InteractionLog, drop_users_without_interactions

FEEDBACK_MODES = ("implicit", "explicit")


def apply_feedback_mode(
    log: InteractionLog, mode: str, *, positive_threshold: float | None = None
) -> InteractionLog:
    """Turn a raw log into training targets for ``mode``.

    implicit: every interaction is a positive, or only those rated ``>= positive_threshold``
    (a 2-star rating is evidence of dislike, not interest). Ratings are dropped afterwards so no
    later stage can use them by accident. Users left with no positive are removed.
    explicit: ratings are the targets; a log without ratings is refused.
    """
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"mode='{mode}'; accepted: {', '.join(FEEDBACK_MODES)}")
    if mode == "explicit":
        if log.ratings is None:
            raise DataError(f"{log.source}: explicit mode needs ratings, and this log has none")
        return log
    if positive_threshold is None:
        kept = log
    else:
        if log.ratings is None:
            raise DataError(
                f"{log.source}: positive_threshold={positive_threshold} needs ratings, "
                "and this log has none"
            )
        kept = log.select(log.ratings >= positive_threshold)
        if len(kept) == 0:
            raise DataError(f"{log.source}: no rating is >= {positive_threshold}")
        kept = drop_users_without_interactions(kept, f"no rating >= {positive_threshold}")
    return InteractionLog(
        kept.users,
        kept.items,
        None,
        kept.timestamps,
        kept.user_ids,
        kept.item_ids,
        kept.source,
        kept.notes,
    )


def drop_sparse_users(log: InteractionLog, min_interactions: int) -> InteractionLog:
    """Remove users with fewer than ``min_interactions`` rows (they cannot be split and scored)."""
    if min_interactions <= 1:
        return log
    counts = np.bincount(log.users, minlength=log.num_users)
    kept = log.select(counts[log.users] >= min_interactions)
    if len(kept) == 0:
        raise DataError(f"{log.source}: no user has >= {min_interactions} interactions")
    return drop_users_without_interactions(kept, f"fewer than {min_interactions} interactions")
