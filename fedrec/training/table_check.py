"""A device's plausibility check of the item table a server sends, before training on it.

``parse_round_config`` refuses absurd settings, but nothing looked at the table's values. An
active server can craft them so that the update reveals the user's items
(``fedrec.membership.active``: e.g. every bias at −30 silences the negatives). An honest table comes
out of averaged updates: its biases are centred near zero, no single item stands far out of
the rest, and the biases' mean changes little from one round to the next; this check refuses
tables far outside that, in terms that DP noise on the table does not trip (see
:class:`TableLimits`). Every ClientApp (``train_reply``) and the embedded ``FedrecClient`` run it
before training. It is a tripwire against crude manipulation, not a defense against a careful
adversary (who can stay within any limits); DP-SGD's guarantee is what holds whatever the
table is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING
from fedrec.protocol.wire import RefusalReason, RoundRefused


class ImplausibleTable(RoundRefused):
    """The received item table looks crafted; the device does not train on it (a
    :class:`RoundRefused`, so the device answers the round as refused, with the details in its
    own log and the code ``IMPLAUSIBLE_TABLE`` in the reply)."""

    reason = RefusalReason.IMPLAUSIBLE_TABLE


@dataclass(frozen=True)
class TableLimits:
    """What an honest table stays within, in forms that DP noise does not break.

    DP noise on the server's step (user-level DP-FedAvg: ``server_lr · z · C / clients`` per
    value and round) makes every value of an honest table large, so fixed caps on the largest
    bias or row refuse honest noisy tables (the audit saw 4 of 5 refused at user-level ε = 1).
    Noise is zero-mean and the same for every item, so the limits are on what it leaves alone:

    ``max_median_bias``: largest |median item bias| (a crafted shift of every bias moves it,
    noise does not). ``max_abs_bias``: a bias more than this *below* the median is refused if it
    is also more than ``outlier_spread`` robust standard deviations (1.4826 · MAD) below it:
    that is the direction that silences an item (one item's bias at −30 makes its row move only
    for a user who holds it), and honest training does not go there, because an unpopular
    item's negatives stop pulling once its score is low. ``max_bias_above_median``: the same
    test above the median, much looser: an honest table's popular items stand far above the
    rest (a synthetic ML-1M-shaped run: median −2.2, robust sd 0.28, top bias 8.6 after three
    rounds), and a positive-side gap of 25 would mean odds of e^25 that honest logistic training
    cannot reach (the pull of positives vanishes as σ(score) → 1). ``max_row_norm``: an
    item-vector norm beyond this is refused only if it is also more than
    ``outlier_norm_multiple`` × the median norm of the non-zero rows (ALS leaves untrained items
    at zero). ``max_bias_shift``: largest |mean bias change| since the table the device last
    saw (a uniform shift is what silences negatives), when the caller has that table.
    """

    max_median_bias: float = 10.0
    max_abs_bias: float = 10.0
    max_bias_above_median: float = 25.0
    max_row_norm: float = 20.0
    outlier_spread: float = 8.0
    outlier_norm_multiple: float = 4.0
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
    bias = np.asarray(item_arrays.get(ITEM_BIAS, np.zeros(0)), np.float64).reshape(-1)
    if bias.size:
        center = float(np.median(bias))
        if abs(center) > limits.max_median_bias:
            raise ImplausibleTable(
                f"the median item bias is {center:.3g}; expected within "
                f"±{limits.max_median_bias:g} (every bias was shifted)"
            )
        spread = limits.outlier_spread * 1.4826 * float(np.median(np.abs(bias - center)))
        for worst, floor, side in (
            (int(np.argmin(bias)), limits.max_abs_bias, "below"),
            (int(np.argmax(bias)), limits.max_bias_above_median, "above"),
        ):
            gap, allowed = abs(float(bias[worst]) - center), max(floor, spread)
            if gap > allowed:
                raise ImplausibleTable(
                    f"item {worst}'s bias {bias[worst]:.3g} lies {gap:.3g} {side} the median "
                    f"bias {center:.3g}; the table's own spread allows {allowed:.3g}"
                )
    table = item_arrays.get(ITEM_EMBEDDING)
    if table is not None and np.size(table):
        norms = np.linalg.norm(np.asarray(table, np.float64), axis=1)
        # the median over trained rows: ALS leaves the items it does not train at zero
        trained = norms[norms > 0]
        typical = float(np.median(trained)) if trained.size else 0.0
        allowed = max(limits.max_row_norm, limits.outlier_norm_multiple * typical)
        worst = int(np.argmax(norms))
        if norms[worst] > allowed:
            raise ImplausibleTable(
                f"item {worst}'s vector has norm {norms[worst]:.3g}; the table allows "
                f"{allowed:.3g} ({limits.outlier_norm_multiple:g}× its median row norm, at "
                f"least {limits.max_row_norm:g})"
            )
    if previous is not None and bias.size and ITEM_BIAS in previous:
        shift = float(np.mean(bias - np.asarray(previous[ITEM_BIAS]).reshape(-1)))
        if abs(shift) > limits.max_bias_shift:
            raise ImplausibleTable(
                f"the item biases moved by {shift:.3g} on average since the last table "
                f"(limit {limits.max_bias_shift:g})"
            )
