"""The server's checks of a released update before it may touch the global model."""

from __future__ import annotations

import math

import numpy as np

ExpectedArrays = dict[str, tuple[tuple[int, ...], np.dtype]]


def expected_arrays(arrays: dict[str, np.ndarray]) -> ExpectedArrays:
    """Name → (shape, dtype) of what was sent: a reply must hold exactly these."""
    return {name: (tuple(value.shape), np.dtype(value.dtype)) for name, value in arrays.items()}


def rejection_reason(
    arrays: dict[str, np.ndarray],
    expected: ExpectedArrays,
    *,
    weight: float = 1.0,
    max_norm: float | None = None,
) -> str | None:
    """Why this update must be left out, or None if it is acceptable.

    It must hold exactly the item-side names, shapes and dtypes that were sent, all finite, with
    a finite non-negative weight; with ``max_norm`` its global L2 norm is bounded too.
    """
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        return f"weight {weight!r} is not a finite number >= 0"
    if set(arrays) != set(expected):
        return f"array names {sorted(arrays)}; expected {sorted(expected)}"
    squared_norm = 0.0
    for name, (shape, dtype) in expected.items():
        value = arrays[name]
        if tuple(np.shape(value)) != shape:
            return f"'{name}' has shape {tuple(np.shape(value))}; expected {shape}"
        if np.asarray(value).dtype != dtype:
            return f"'{name}' has dtype {np.asarray(value).dtype}; expected {dtype}"
        if not np.isfinite(value).all():
            return f"'{name}' holds NaN or infinite values"
        squared_norm += float(np.sum(np.asarray(value, dtype=np.float64) ** 2))
    norm = math.sqrt(squared_norm)
    if max_norm is not None and norm > max_norm:
        return f"update norm {norm:.3g} exceeds {max_norm:.3g}"
    return None
