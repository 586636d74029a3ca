"""What one user (or a node's block of users) releases in a federated ALS round.

For each user: the factor ``u`` solved on the device, clipped to ``clip_norm`` (DP-ALS), and at
most ``max_items`` of their items, drawn at random each round. The user adds ``u uᵀ`` to the
global Gram ``G``, and ``u uᵀ`` to ``A_j``, ``u`` to ``b_j`` and 1 to ``n_j`` for each drawn item
``j``. One user therefore moves ``G`` by at most ``Γ²`` (Frobenius), all the ``A_j`` together by
at most ``√B·Γ²``, the ``b_j`` by ``√B·Γ`` and the counts by ``√B``: the L2 sensitivities
:mod:`fedrec.privacy.als` calibrates its noise to (``tests/test_als.py`` asserts them on real
contributions).

On the wire the statistics are sparse, over the items the block touched: ``als.items`` (sorted
ids), ``als.lhs`` [k, d, d], ``als.rhs`` [k, d], ``als.counts`` [k], and ``als.gram`` [d, d].
``als.lhs`` only where the round asks for per-item Grams (``als.item_grams``): a server that
solves with ``A_j ≈ n_j · G / N`` gets none, so ``u uᵀ`` per item never leaves the device.

Under secure aggregation (SecAgg+ masks fixed-shape vectors and the server learns only their
mean) a device sends the same statistics densely over the whole catalogue
(:data:`SECURE_NAMES`: counts [items], Gram [d, d], right-hand sides [items, d]; no per-item
Grams) and :func:`sums_from_secure_mean` turns the round's mean back into sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.training.als.solve import symmetrize

ITEMS, LHS, RHS, COUNTS, GRAM = "als.items", "als.lhs", "als.rhs", "als.counts", "als.gram"
STATISTIC_NAMES = (ITEMS, LHS, RHS, COUNTS, GRAM)


SECURE_NAMES = (COUNTS, GRAM, RHS)  # the dense arrays a device masks for SecAgg+, in order


def statistic_names(item_grams: bool) -> tuple[str, ...]:
    """The arrays a reply carries: all five, or all but the per-item Grams."""
    return STATISTIC_NAMES if item_grams else tuple(n for n in STATISTIC_NAMES if n != LHS)


@dataclass
class AlsStatistics:
    """Sums over some users, sparse over the items they touched (sorted, unique)."""

    items: np.ndarray
    lhs: np.ndarray | None  # None: the round asked for no per-item Grams
    rhs: np.ndarray
    counts: np.ndarray
    gram: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            ITEMS: self.items.astype(np.int64),
            RHS: self.rhs.astype(np.float32),
            COUNTS: self.counts.astype(np.float32),
            GRAM: self.gram.astype(np.float32),
        }
        if self.lhs is not None:
            arrays[LHS] = self.lhs.astype(np.float32)
        return arrays


def clip_factors(factors: np.ndarray, clip_norm: float) -> np.ndarray:
    """Each row scaled to L2 norm ≤ ``clip_norm`` (0: unchanged). Shrunk by a relative 1e-6 so
    float32 rounding on the wire cannot push a row past the bound."""
    if not clip_norm > 0:
        return factors
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    scale = np.where(norms > clip_norm, clip_norm / np.maximum(norms, 1e-300) * (1 - 1e-6), 1.0)
    return factors * scale


def released_items(items: np.ndarray, max_items: int, rng: np.random.Generator) -> np.ndarray:
    """The user's items whose statistics leave the device this round: all of them, or
    ``max_items`` drawn uniformly without replacement (sorted, unique)."""
    unique = np.unique(np.asarray(items, dtype=np.int64))
    if max_items <= 0 or len(unique) <= max_items:
        return unique
    return np.sort(rng.choice(unique, size=max_items, replace=False))


def statistics_of(
    factors: np.ndarray, item_lists: Sequence[np.ndarray], *, item_grams: bool = True
) -> AlsStatistics:
    """The sums over users (row ``i`` of ``factors`` released ``item_lists[i]``, already bounded
    and clipped); the per-item Grams only with ``item_grams``."""
    factors = np.asarray(factors, dtype=np.float64)
    dim = factors.shape[1]
    if len(item_lists) == 1:  # one user: every drawn item gets the same u uᵀ and u
        items = np.unique(np.asarray(item_lists[0], dtype=np.int64))
        outer = np.outer(factors[0], factors[0])
        return AlsStatistics(
            items,
            np.broadcast_to(outer, (len(items), dim, dim)) if item_grams else None,
            np.broadcast_to(factors[0], (len(items), dim)),
            np.ones(len(items)),
            outer,
        )
    users = np.repeat(np.arange(len(item_lists)), [len(items) for items in item_lists])
    pairs = (
        np.concatenate([np.asarray(i, dtype=np.int64) for i in item_lists])
        if len(item_lists)
        else np.empty(0, dtype=np.int64)
    )
    order = np.argsort(pairs, kind="stable")
    pairs, users = pairs[order], users[order]
    items, starts, counts = np.unique(pairs, return_index=True, return_counts=True)
    lhs = np.empty((len(items), dim, dim)) if item_grams else None
    rhs = np.empty((len(items), dim))
    for row, (start, count) in enumerate(zip(starts, counts, strict=True)):
        touching = factors[users[start : start + count]]
        if lhs is not None:
            lhs[row] = touching.T @ touching
        rhs[row] = touching.sum(axis=0)
    return AlsStatistics(items, lhs, rhs, counts.astype(np.float64), factors.T @ factors)


def dense_statistics(
    arrays: dict[str, np.ndarray] | None, num_items: int, dim: int
) -> dict[str, np.ndarray]:
    """One reply's sparse statistics spread over the whole catalogue (:data:`SECURE_NAMES`);
    None (the device did not train): zeros of the same shapes, so the secure sum stays well
    formed."""
    dense = {
        COUNTS: np.zeros(num_items, np.float32),
        GRAM: np.zeros((dim, dim), np.float32),
        RHS: np.zeros((num_items, dim), np.float32),
    }
    if arrays is not None:
        items = np.asarray(arrays[ITEMS], dtype=np.int64)
        dense[COUNTS][items] = arrays[COUNTS]
        dense[RHS][items] = arrays[RHS]
        dense[GRAM][:] = arrays[GRAM]
    return dense


def sums_from_secure_mean(
    mean: dict[str, np.ndarray], users: int, *, noisy: bool = False
) -> dict[str, np.ndarray]:
    """The sparse sums of ``users`` users from the mean SecAgg+ released (weight 1 each): the
    counts rounded to whole numbers (the mean was quantized; not when the devices' ``noisy``
    shares are in them) and the Gram symmetrised; every item is listed, so the server's checks
    and solve read it as any node's sums."""
    counts = np.asarray(mean[COUNTS], np.float64).reshape(-1) * users
    if not noisy:
        counts = np.rint(counts)
    gram = np.asarray(mean[GRAM], np.float64) * users
    return {
        ITEMS: np.arange(len(counts), dtype=np.int64),
        COUNTS: counts,
        GRAM: symmetrize(gram),
        RHS: np.asarray(mean[RHS], np.float64) * users,
    }
