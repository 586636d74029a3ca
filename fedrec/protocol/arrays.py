"""What the item side on the wire must look like, checked by the device before it trains."""

from __future__ import annotations

import numpy as np

from fedrec.model.spec import GLOBAL_BIAS, ITEM_BIAS, ITEM_EMBEDDING, ITEM_SIDE
from fedrec.protocol.wire import RefusalReason, RoundRefused


def expected_item_arrays(
    num_items: int, embedding_dim: int, *, explicit: bool
) -> dict[str, tuple[int, int]]:
    """Name → shape of the item side of a model with ``num_items`` items."""
    expected = {
        ITEM_EMBEDDING: (num_items, embedding_dim),
        ITEM_BIAS: (num_items, 1),
    }
    if explicit:
        expected[GLOBAL_BIAS] = (1, 1)
    return expected


def check_received_arrays(
    arrays: dict[str, np.ndarray], *, num_items: int, embedding_dim: int, explicit: bool
) -> None:
    """Refuse (:class:`RoundRefused`, ``CATALOG_MISMATCH``) an item side this device did not
    expect: other names, other shapes than ``num_items`` rows of ``embedding_dim`` (biases: one
    column), a dtype other than float32/64, or non-finite values. Checked before anything is
    trained, so a bad table costs no privacy and crashes nothing."""
    expected = expected_item_arrays(num_items, embedding_dim, explicit=explicit)
    mismatch = RefusalReason.CATALOG_MISMATCH
    if set(arrays) != set(expected) or not set(expected) <= set(ITEM_SIDE):
        raise RoundRefused(f"item arrays {sorted(arrays)}; expected {sorted(expected)}", mismatch)
    for name, shape in expected.items():
        value = arrays[name]
        if tuple(value.shape) != shape:
            raise RoundRefused(
                f"'{name}' has shape {tuple(value.shape)}; expected {shape}", mismatch
            )
        if value.dtype not in (np.float32, np.float64):
            raise RoundRefused(
                f"'{name}' has dtype {value.dtype}; expected float32 or float64", mismatch
            )
        if not np.isfinite(value).all():
            raise RoundRefused(
                f"'{name}' holds NaN or infinite values", RefusalReason.IMPLAUSIBLE_TABLE
            )
