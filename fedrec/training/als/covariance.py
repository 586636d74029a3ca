"""The two releases a ``covariance_start`` run begins with (McSherry & Mironov, KDD 2009).

DP-ALS's factor rounds bound a user by at most B items and a clipped factor, so the noise on
each item's sum scales with √B while a user's signal there is one factor: few users per item
(943 on ML-100K) leave little above the noise. A user's *whole* log fits in a release of
sensitivity 1 instead, if the user spreads a unit norm over it:

1. ``popularity``: the user's items weighted ``1/√k`` (k their items): the vector has L2 norm 1.
   Its noisy sum ranks the items; the server trains the frequent ones.
2. ``covariance``: ``x̂ x̂ᵀ`` over the user's items that the table trains, ``x̂`` their indicator
   scaled to norm 1 (every entry of the block is ``1/k``; Frobenius norm 1, trace 1). Its noisy
   sum is the item-item covariance whose top eigenvectors become the item table
   (:func:`fedrec.training.als.solve.items_from_covariance`).

Both are sums over users, so a node sends its block's sum; the server adds the noise once
(:mod:`fedrec.privacy.als`). On the wire: ``als.items`` (sorted ids) with ``als.counts`` [k]
(popularity) or ``als.cov`` [k, k] (covariance).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrec.training.als.statistics import COUNTS, ITEMS

COVARIANCE = "als.cov"
RELEASE_NAMES = {"popularity": (ITEMS, COUNTS), "covariance": (ITEMS, COVARIANCE)}


def popularity_of(item_lists: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Σ over users of their items weighted ``1/√k``: one user moves it by L2 norm 1."""
    lists = [np.unique(np.asarray(items, dtype=np.int64)) for items in item_lists]
    lists = [items for items in lists if len(items)]
    if not lists:
        return {ITEMS: np.empty(0, np.int64), COUNTS: np.empty(0, np.float32)}
    weights = np.concatenate([np.full(len(items), 1 / np.sqrt(len(items))) for items in lists])
    ids, where = np.unique(np.concatenate(lists), return_inverse=True)
    return {ITEMS: ids, COUNTS: np.bincount(where, weights).astype(np.float32)}


def covariance_of(item_lists: Sequence[np.ndarray], trained: np.ndarray) -> dict[str, np.ndarray]:
    """Σ over users of ``x̂ x̂ᵀ`` over their items inside ``trained`` (a boolean mask over the
    catalogue): one user moves it by Frobenius norm 1 (none where no item of theirs is trained).
    """
    kept = [np.unique(np.asarray(i, dtype=np.int64)) for i in item_lists]
    kept = [items[trained[items]] for items in kept]
    ids = np.unique(np.concatenate(kept)) if kept else np.empty(0, dtype=np.int64)
    cov = np.zeros((len(ids), len(ids)))
    for items in kept:
        if len(items):
            at = np.searchsorted(ids, items)
            cov[np.ix_(at, at)] += 1.0 / len(items)
    return {ITEMS: ids.astype(np.int64), COVARIANCE: cov.astype(np.float32)}
