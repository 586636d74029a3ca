"""Why the server refuses a federated (DP-)ALS reply (the checks of ``als_rule``).

A reply carries sums over its users' statistics. An honest sum has a known form (names, shapes,
sorted item ids in the catalogue, finite values) and, per user summed, known bounds (PSD Grams,
counts of at most one, and under DP the sensitivity bounds the noise is calibrated to). A reply
outside them is refused and its users counted as rejected; the round goes on.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fedrec.training.als.covariance import (
    COVARIANCE,
    CROSS,
    MIN_RESIDUAL,
    RELEASE_NAMES,
    WEIGHT,
)
from fedrec.training.als.statistics import COUNTS, GRAM, ITEMS, LHS, RHS, statistic_names

if TYPE_CHECKING:
    from fedrec.federation.als_rule import AlsServerPlan

Arrays = dict[str, np.ndarray]
_TOLERANCE = 1e-3


def _valid_item_ids(items: np.ndarray, num_items: int) -> bool:
    """Whole, sorted, unique ids inside the catalogue (an empty list is valid)."""
    return not len(items) or not (
        np.any(items != np.round(items))
        or items.min() < 0
        or items.max() >= num_items
        or np.any(np.diff(items) <= 0)
    )


def start_release_rejection(
    arrays: Arrays,
    *,
    release: str,
    num_items: int,
    users: int,
    trained: np.ndarray | None,
    direction: np.ndarray | None = None,
) -> str | None:
    """Why a reply's covariance-start release (summed over ``users`` users) must be refused, or
    None. Each honest user adds a popularity vector of L2 norm 1 with entries in (0, 1], or the
    sparse parts of ``w y yᵀ`` (:mod:`fedrec.training.als.covariance`) over items that
    ``trained`` marks, whose rebuilt sum along ``direction`` (the table's ``d``, over the
    catalogue) is PSD with trace at most 1; a sum of ``users`` stays within ``users`` times
    that."""
    expected = RELEASE_NAMES[release]
    if set(arrays) != set(expected):
        return f"array names {sorted(arrays)}; expected {sorted(expected)} (a {release} release)"
    items = np.asarray(arrays[ITEMS])
    k = len(items) if items.ndim == 1 else -1
    shapes = {COUNTS: (k,), COVARIANCE: (k, k), CROSS: (k,), WEIGHT: (1,)}
    for name in expected[1:]:
        values = np.asarray(arrays[name], dtype=np.float64)
        if values.shape != shapes[name]:
            return f"'{name}' has shape {values.shape}; expected {shapes[name]}"
        if not np.isfinite(values).all():
            return f"'{name}' holds NaN or infinite values"
    if not _valid_item_ids(items, num_items):
        return f"'{ITEMS}' must be sorted unique item ids in [0, {num_items})"
    slack = 1 + 1e-4
    if release == "popularity":
        counts = np.asarray(arrays[COUNTS], dtype=np.float64)
        if np.any(counts < 0) or np.any(counts > users * slack):
            return f"'{COUNTS}' must lie in [0, {users}] (users summed)"
        norm = float(np.linalg.norm(counts))
        if norm > users * slack:
            return f"‖{COUNTS}‖ {norm:.4g} exceeds what {users} unit-norm users can send"
        return None
    if trained is not None and k and not trained[items.astype(np.int64)].all():
        return f"'{ITEMS}' lists items the table does not train"
    return _covariance_rejection(arrays, items.astype(np.int64), users, direction)


def _covariance_rejection(
    arrays: Arrays, items: np.ndarray, users: int, direction: np.ndarray | None
) -> str | None:
    """The bounds of a covariance release's parts and of the sum they rebuild."""
    cov = np.asarray(arrays[COVARIANCE], dtype=np.float64)
    cross = np.asarray(arrays[CROSS], dtype=np.float64)
    weight = float(np.asarray(arrays[WEIGHT], dtype=np.float64)[0])
    most = users / MIN_RESIDUAL**2 * (1 + 1e-4)  # one user's w is at most 1/ρ²
    if np.any(cov < 0) or np.any(cov > most) or not 0 <= weight <= most:
        return f"'{COVARIANCE}' and '{WEIGHT}' must lie in [0, {most:.4g}] ({users} users)"
    if len(items) and np.abs(cov - cov.T).max() > _TOLERANCE * (1 + cov.max()):
        return f"'{COVARIANCE}' is not symmetric"
    along = np.zeros(len(items)) if direction is None else direction[items]
    # Σ w y yᵀ = F M Fᵀ with F = [the items' unit vectors, d]: M PSD makes the sum PSD
    parts = np.block([[cov, -cross[:, None]], [-cross[None, :], np.array([[weight]])]])
    scale = 1 + float(np.abs(parts).max())
    if np.linalg.eigvalsh(parts).min() < -_TOLERANCE * scale:
        return f"the covariance rebuilt from '{COVARIANCE}', '{CROSS}' and '{WEIGHT}' is not PSD"
    trace = float(np.trace(cov) - 2 * cross @ along + weight)
    if trace > users * (1 + 1e-4):
        return f"the rebuilt covariance's trace {trace:.4g} exceeds {users} (users summed)"
    return None


def statistics_rejection(
    arrays: Arrays,
    *,
    num_items: int,
    dim: int,
    users: int,
    plan: AlsServerPlan,
    noisy: bool = False,
) -> str | None:
    """Why a reply's summed statistics of ``users`` users must be refused, or None. ``noisy``
    (the devices' noise shares are in the sum): only names, shapes, finiteness and item ids
    can be checked; noise makes counts fractional and the Gram indefinite, and SecAgg+ already
    bounds every device's values to ±clipping_range."""
    expected = statistic_names(plan.spec.item_grams)
    if set(arrays) != set(expected):
        return f"array names {sorted(arrays)}; expected {sorted(expected)}"
    items = np.asarray(arrays[ITEMS])
    k = len(items) if items.ndim == 1 else -1
    shapes = {ITEMS: (k,), LHS: (k, dim, dim), RHS: (k, dim), COUNTS: (k,), GRAM: (dim, dim)}
    for name, shape in ((n, shapes[n]) for n in expected):
        if tuple(np.shape(arrays[name])) != shape:
            return f"'{name}' has shape {tuple(np.shape(arrays[name]))}; expected {shape}"
        if not np.isfinite(np.asarray(arrays[name], dtype=np.float64)).all():
            return f"'{name}' holds NaN or infinite values"
    if not _valid_item_ids(items, num_items):
        return f"'{ITEMS}' must be sorted unique item ids in [0, {num_items})"
    if noisy:
        return None
    gram = np.asarray(arrays[GRAM], dtype=np.float64)
    lhs = np.asarray(arrays[LHS], dtype=np.float64) if LHS in arrays else None
    counts = np.asarray(arrays[COUNTS], dtype=np.float64)
    scale = 1.0 + float(np.abs(gram).max(initial=0.0))
    if np.abs(gram - gram.T).max(initial=0.0) > _TOLERANCE * scale:
        return f"'{GRAM}' is not symmetric"
    if np.linalg.eigvalsh(gram).min(initial=0.0) < -_TOLERANCE * scale:
        return f"'{GRAM}' is not positive semi-definite"
    if k and lhs is not None and not _plausibly_psd(lhs, _TOLERANCE * scale):
        return f"an item's '{LHS}' is not positive semi-definite"
    if np.any(counts < 0) or np.any(counts != np.round(counts)) or np.any(counts > users):
        return f"'{COUNTS}' must be whole numbers in [0, {users}] (users summed)"
    privacy = plan.privacy
    if privacy is None:
        return None
    clip, budget = privacy.clip_norm, privacy.max_items
    slack = 1 + 1e-4
    bounds = (
        (float(np.trace(gram)), users * clip**2, "the Gram's trace"),
        (float(counts.sum()), users * budget, "the item counts' total"),
        (float(np.linalg.norm(arrays[RHS])), users * math.sqrt(budget) * clip, "‖b‖"),
    )
    if lhs is not None:
        bounds += ((float(np.linalg.norm(lhs)), users * math.sqrt(budget) * clip**2, "‖A‖"),)
    for value, bound, name in bounds:
        if value > bound * slack:
            return f"{name} {value:.4g} exceeds what {users} bounded users can send ({bound:.4g})"
    return None


def _plausibly_psd(stack: np.ndarray, tolerance: float) -> bool:
    """Symmetric, a non-negative diagonal and every 2×2 principal minor ≥ 0: necessary for PSD
    and O(k·d²) (a full eigen-check per reply costs O(k·d³)). The server projects the summed
    ``A_j`` to PSD anyway, so what slips through cannot make a system indefinite."""
    if np.abs(stack - np.swapaxes(stack, 1, 2)).max(initial=0.0) > tolerance:
        return False
    diagonal = np.diagonal(stack, axis1=1, axis2=2)
    if diagonal.min(initial=0.0) < -tolerance:
        return False
    bound = np.sqrt(np.maximum(diagonal, 0))
    return bool(np.all(np.abs(stack) <= bound[:, :, None] * bound[:, None, :] + tolerance))
