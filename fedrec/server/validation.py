"""Server-side checks of a device's reply before it may touch the global model."""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict

from fedrec.client.messages import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES

ExpectedArrays = dict[str, tuple[tuple[int, ...], np.dtype]]


def expected_arrays(arrays: dict[str, np.ndarray]) -> ExpectedArrays:
    return {name: (tuple(value.shape), value.dtype) for name, value in arrays.items()}


def rejection_reason(
    content: RecordDict, expected: ExpectedArrays, max_update_norm: float | None = None
) -> str | None:
    """Why this training reply must be left out of the average, or None if it is acceptable.

    A reply must hold exactly one ArrayRecord with exactly the item-side names, shapes and dtypes
    that were sent, all finite, and one MetricRecord with a non-negative weight. With
    ``max_update_norm`` the update's global L2 norm is bounded too.
    """
    array_records, metric_records = content.array_records, content.metric_records
    if list(array_records) != [ARRAYS_KEY] or len(content.config_records):
        return f"expected one ArrayRecord '{ARRAYS_KEY}' and no ConfigRecord"
    if list(metric_records) != [METRICS_KEY]:
        return f"expected one MetricRecord '{METRICS_KEY}'"
    weight = metric_records[METRICS_KEY].get(NUM_EXAMPLES)
    if not isinstance(weight, int | float) or not np.isfinite(weight) or weight < 0:
        return f"metric '{NUM_EXAMPLES}' is missing or invalid"
    record = array_records[ARRAYS_KEY]
    if set(record) != set(expected):
        return f"array names {sorted(record)}; expected {sorted(expected)}"
    squared_norm = 0.0
    for name, (shape, dtype) in expected.items():
        array = record[name]
        if tuple(array.shape) != shape:
            return f"'{name}' has shape {tuple(array.shape)}; expected {shape}"
        try:
            same_dtype = np.dtype(array.dtype) == dtype
            value = array.numpy() if same_dtype else None
        except (TypeError, ValueError) as err:
            return f"'{name}' cannot be decoded: {err}"
        if value is None:
            return f"'{name}' has dtype {array.dtype}; expected {dtype}"
        if tuple(value.shape) != shape:
            return f"'{name}' decodes to shape {tuple(value.shape)}; expected {shape}"
        if not np.isfinite(value).all():
            return f"'{name}' holds NaN or infinite values"
        squared_norm += float(np.sum(value.astype(np.float64) ** 2))
    if max_update_norm is not None and np.sqrt(squared_norm) > max_update_norm:
        return f"update norm {np.sqrt(squared_norm):.3g} exceeds {max_update_norm:.3g}"
    return None
