"""A device's plausibility check of the item table a server sends, before training on it.

``parse_round_config`` refuses absurd settings, but nothing looked at the table's values. An
active server can craft them so that the update reveals the user's items
(``fedrec.audit.active``: e.g. every bias at −30 silences the negatives). An honest table comes
out of averaged small updates, so its values stay in a modest range and change little from one
round to the next; this check refuses tables far outside that. It is a tripwire against crude
manipulation, not a defense against a careful adversary (who can stay within any fixed limits);
DP-SGD's guarantee is what holds whatever the table is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class ImplausibleTable(ValueError):
    """The received item table looks crafted; the device does not train on it."""


@dataclass(frozen=True)
class TableLimits:
    """``max_abs_bias``: largest |item bias|; ``max_row_norm``: largest item-vector norm;
    ``max_bias_shift``: largest |mean bias change| since the table the device last saw (a
    uniform shift of every bias is what silences negatives)."""

    max_abs_bias: float = 10.0
    max_row_norm: float = 20.0
    max_bias_shift: float = 2.0


def check_item_table(
    item_arrays: dict[str, np.ndarray],
    *,
    previous: dict[str, np.ndarray] | None = None,
    limits: TableLimits = TableLimits(),
) -> None:
    """Raise :class:`ImplausibleTable` naming the first limit the table breaks."""
    for name, value in item_arrays.items():
        if not np.isfinite(value).all():
            raise ImplausibleTable(f"'{name}' holds NaN or infinite values")
    bias = np.asarray(item_arrays.get("item_bias.weight", np.zeros(0))).reshape(-1)
    if bias.size and np.abs(bias).max() > limits.max_abs_bias:
        raise ImplausibleTable(
            f"an item bias of {np.abs(bias).max():.3g} exceeds {limits.max_abs_bias:g}"
        )
    table = item_arrays.get("item_embedding.weight")
    if table is not None and len(table):
        largest = float(np.linalg.norm(table, axis=1).max())
        if largest > limits.max_row_norm:
            raise ImplausibleTable(
                f"an item vector of norm {largest:.3g} exceeds {limits.max_row_norm:g}"
            )
    if previous is not None and bias.size and "item_bias.weight" in previous:
        shift = float(np.mean(bias - np.asarray(previous["item_bias.weight"]).reshape(-1)))
        if abs(shift) > limits.max_bias_shift:
            raise ImplausibleTable(
                f"the item biases moved by {shift:.3g} on average since the last table "
                f"(limit {limits.max_bias_shift:g})"
            )
