"""The two releases a ``covariance_start`` run begins with (McSherry & Mironov, KDD 2009).

DP-ALS's factor rounds bound a user by at most B items and a clipped factor, so the noise on
each item's sum scales with √B while a user's signal there is one factor: few users per item
(943 on ML-100K) leave little above the noise. A user's *whole* log fits in a release of
sensitivity 1 instead, if the user spreads a unit norm over it:

1. ``popularity``: the user's items weighted ``1/√k`` (k their items): the vector has L2 norm 1.
   Its noisy sum ranks the items; the server trains the frequent ones, and the table it sends
   back carries their (private) popularity direction ``d`` (unit norm) in column 0
   (:func:`popularity_table`): a non-zero row marks an item the covariance will cover.
2. ``covariance``: the user's indicator over the trained items scaled to norm 1, ``x``, *minus
   its part along d*: ``y = x − (x·d) d``, and the user sends ``y yᵀ / max(‖y‖, ρ)²`` (ρ =
   :data:`MIN_RESIDUAL`): Frobenius norm and trace at most 1. Its noisy sum, projected off d,
   holds the personal directions; ``d`` and their top eigenvectors become the first item table
   (:func:`items_from_covariance`).

Why deflate: the popularity direction is the covariance's largest component (a third of the
trace on ML-100K), already released in round 1; leaving it in spends a third of every user's
unit norm on it. Rescaled to norm 1 after its removal, the personal directions carry ~1.5× more
eigenvalue above the same noise: on ML-100K's validation split at ε = 1 the second eigenvalue
went from 110 to 171 against a noise edge of 75, and NDCG@10 from 0.0434 to 0.0468 (8 noise
draws; benchmarks/RESULTS.md, 2026-12-07).

Both are sums over users, so a node sends its block's sum; the server adds the noise once
(:mod:`fedrec.privacy.als`). ``y yᵀ`` is dense over every trained item, so on the wire it is
split into what is sparse in the user's items (``k`` = their trained items):
``als.items`` (sorted ids), ``als.cov`` [k, k] = Σ w x xᵀ, ``als.cross`` [k] = Σ w (x·d) x and
``als.weight`` [1] = Σ w (x·d)², with ``w = 1 / max(‖y‖, ρ)²``; the server rebuilds
``Σ w y yᵀ = cov − cross dᵀ − d crossᵀ + weight · d dᵀ`` (:func:`deflated_sum`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedrec.training.als.solve import symmetrize
from fedrec.training.als.statistics import COUNTS, ITEMS

COVARIANCE = "als.cov"
CROSS = "als.cross"
WEIGHT = "als.weight"
RELEASE_NAMES = {
    "popularity": (ITEMS, COUNTS),
    "covariance": (ITEMS, COVARIANCE, CROSS, WEIGHT),
}
# A user whose items lie almost along d has little to add beyond it: scaling their residual up
# to norm 1 would send mostly the rounding of their few items, so the scale stops at 1/ρ².
MIN_RESIDUAL = 0.5


def popularity_of(item_lists: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Σ over users of their items weighted ``1/√k``: one user moves it by L2 norm 1."""
    lists = [np.unique(np.asarray(items, dtype=np.int64)) for items in item_lists]
    lists = [items for items in lists if len(items)]
    if not lists:
        return {ITEMS: np.empty(0, np.int64), COUNTS: np.empty(0, np.float32)}
    weights = np.concatenate([np.full(len(items), 1 / np.sqrt(len(items))) for items in lists])
    ids, where = np.unique(np.concatenate(lists), return_inverse=True)
    return {ITEMS: ids, COUNTS: np.bincount(where, weights).astype(np.float32)}


def popularity_table(popularity: np.ndarray, trained: np.ndarray, dim: int) -> np.ndarray:
    """The table after the popularity release: column 0 holds the trained items' (private)
    popularity, clipped to a positive floor so every trained row is non-zero, as a unit vector;
    the rest is zero. The devices read both the trained items and ``d`` from it."""
    table = np.zeros((len(popularity), dim))
    values = np.asarray(popularity, dtype=np.float64)[trained]
    if len(values):
        floor = 1e-3 * max(float(values.max()), 1.0)
        values = np.maximum(values, floor)
        table[trained, 0] = values / np.linalg.norm(values)
    return table


def direction_of(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The trained items (non-zero rows) and the popularity direction ``d`` over the catalogue
    (column 0 on them, unit norm; zero where the table carries none), read from a table as
    the devices and the server both do, in float64."""
    table = np.asarray(table, dtype=np.float64)
    trained = np.any(table != 0, axis=1)
    direction = np.where(trained, table[:, 0], 0.0)
    norm = float(np.linalg.norm(direction))
    return trained, direction / norm if norm > 0 else direction


def covariance_of(item_lists: Sequence[np.ndarray], table: np.ndarray) -> dict[str, np.ndarray]:
    """Σ over users of ``w y yᵀ`` (the module's docstring) over their items that ``table``
    trains, in its sparse parts: one user moves the rebuilt sum by Frobenius norm at most 1
    (none where no item of theirs is trained)."""
    trained, direction = direction_of(table)
    kept = [np.unique(np.asarray(i, dtype=np.int64)) for i in item_lists]
    kept = [items[trained[items]] for items in kept]
    kept = [items for items in kept if len(items)]
    ids = np.unique(np.concatenate(kept)) if kept else np.empty(0, dtype=np.int64)
    cov = np.zeros((len(ids), len(ids)))
    cross = np.zeros(len(ids))
    weight = 0.0
    for items in kept:
        at = np.searchsorted(ids, items)
        along = float(direction[items].sum()) / math.sqrt(len(items))  # x·d
        residual = math.sqrt(max(1.0 - along**2, 0.0))  # ‖y‖: ‖x‖ = ‖d‖ = 1
        scale = 1.0 / max(residual, MIN_RESIDUAL) ** 2
        cov[np.ix_(at, at)] += scale / len(items)
        cross[at] += scale * along / math.sqrt(len(items))
        weight += scale * along**2
    return {
        ITEMS: ids.astype(np.int64),
        COVARIANCE: cov.astype(np.float32),
        CROSS: cross.astype(np.float32),
        WEIGHT: np.array([weight], dtype=np.float32),
    }


def deflated_sum(
    replies: Sequence[dict[str, np.ndarray]], ids: np.ndarray, direction: np.ndarray
) -> np.ndarray:
    """The replies' ``Σ w y yᵀ`` over the trained items ``ids`` (sorted), rebuilt from their
    summed sparse parts with the direction the table carried (``direction`` over ``ids``): the
    rebuild is linear, so it runs once, not once per reply."""
    cov = np.zeros((len(ids), len(ids)))
    cross = np.zeros(len(ids))
    weight = 0.0
    for arrays in replies:
        at = np.searchsorted(ids, np.asarray(arrays[ITEMS], np.int64))
        cov[np.ix_(at, at)] += np.asarray(arrays[COVARIANCE], dtype=np.float64)
        cross[at] += np.asarray(arrays[CROSS], dtype=np.float64)
        weight += float(np.asarray(arrays[WEIGHT], dtype=np.float64).sum())
    along = np.outer(cross, direction)
    return cov - along - along.T + weight * np.outer(direction, direction)


def items_from_covariance(
    cov: np.ndarray, dim: int, noise_edge: float = 0.0, direction: np.ndarray | None = None
) -> np.ndarray:
    """The item factors [m, dim] of a (noisy) deflated item-item covariance [m, m]: column 0 the
    popularity direction ``direction`` (unit norm; None: no deflation, the covariance's own top
    eigenvector), then the top eigenvectors of the covariance projected off it, each signed so
    its largest entry is positive (reproducible across engines whose sums differ in rounding)
    and shrunk by its estimated alignment with the noiseless one; every column is scaled by
    √(m / dim'), dim' = min(dim, m), so a row's RMS norm is at most 1, the size of an ALS item
    factor whose scores target 1.

    ``noise_edge``: where the noise's own spectrum ends (``√2·z·√m`` for the symmetrised Gaussian
    noise the server adds: ``fedrec.federation.als_rule.spectral_edge``). An eigenvalue λ below
    it is one the noise alone could produce: its column is zero. Above it, the spiked Wigner
    model (Benaych-Georges & Nadakuditi 2011) gives the noiseless eigenvalue
    ``ℓ = (λ + √(λ² − edge²)) / 2`` and the squared cosine ``c² = 1 − edge²/(4ℓ²)`` between the
    noisy eigenvector and the true one; the column is scaled by ``c`` so the devices' ridge
    solve shrinks a component as much as its direction is noise. Without noise every component
    with λ > 0 is kept whole."""
    cov = symmetrize(np.asarray(cov, dtype=np.float64))
    size = cov.shape[0]
    kept = min(dim, size)
    table = np.zeros((size, dim))
    if not kept:
        return table
    columns = []
    if direction is not None:
        direction = np.asarray(direction, dtype=np.float64)
        project = np.eye(size) - np.outer(direction, direction)
        cov = project @ cov @ project  # post-processing: d is the earlier release's
        columns.append(direction)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(-values, kind="stable")[: kept - len(columns)]
    top = vectors[:, order]
    signs = np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
    top = top * np.where(signs == 0, 1.0, signs)
    values = values[order]
    if direction is None:  # the top eigenvector is the popularity direction: kept whole
        columns.append(top[:, 0])
        top, values = top[:, 1:], values[1:]
    columns.extend(top.T * _alignment(values, noise_edge)[:, None])
    table[:, : len(columns)] = np.column_stack(columns) * math.sqrt(size / kept)
    return table


def _alignment(values: np.ndarray, edge: float) -> np.ndarray:
    """``c`` of each eigenvalue (:func:`items_from_covariance`): 0 at or below the edge."""
    above = values > edge
    root = np.sqrt(np.maximum(values**2 - edge**2, 0.0))
    spike = np.where(above, (values + root) / 2, 1.0)
    return np.where(above, np.sqrt(np.clip(1 - edge**2 / (4 * spike**2), 0, 1)), 0.0)
