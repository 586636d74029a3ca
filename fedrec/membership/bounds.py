"""What an (ε, δ) guarantee allows any membership attack to reach, as a ROC AUC.

A mechanism M is (ε, δ)-DP iff every test between two neighbouring inputs D (with the record)
and D' (without it) has, for every rejection region,

    e^ε · FPR + FNR ≥ 1 − δ      and      FPR + e^ε · FNR ≥ 1 − δ,

that is  TPR ≤ e^ε · FPR + δ  and  TPR ≤ 1 − e^{−ε} · (1 − δ − FPR)

(Wasserman & Zhou 2010, "A statistical framework for differential privacy", JASA, Thm 2.4;
Kairouz, Oh & Viswanath 2015, "The composition theorem for differential privacy", ICML, Thm 2.1
— the "privacy region"). The best ROC curve an attack can have is therefore

    TPR*(x) = min(1, e^ε·x + δ, 1 − e^{−ε}·(1 − δ − x)),   x = FPR ∈ [0, 1],

and its area is an upper bound on the AUC of *any* attack on the (in, out) game:

    AUC ≤ ∫₀¹ TPR*(x) dx.

The curve is the minimum of three lines, so the integral has a closed form (:func:`auc_bound`).
At ε = 0, δ = 0 it is 0.5 (no attack beats chance); it reaches 1 as ε grows. Mixtures of such
games (one per user, pooled) obey the same bound, since both inequalities are linear in the
two distributions. With δ = 0 the bound is e^ε / (1 + e^ε): 0.731 at ε = 1, 0.982 at ε = 4.

What the bound covers: the game "this one record is in the user's data or not, everything else
fixed". The audit's main AUC pools different items of one user (a positive against the other
items), which is the practical question but not exactly that game; :mod:`fedrec.membership.game`
plays the exact game, whose AUC the bound must contain.
"""

from __future__ import annotations

import math


def auc_bound(epsilon: float, delta: float) -> float:
    """The largest ROC AUC any attack can reach against an (ε, δ)-DP mechanism (see above).

    ``epsilon`` may be ``inf`` (no guarantee: 1.0). Raises ``ValueError`` for ε < 0 or δ
    outside [0, 1].
    """
    if epsilon < 0 or math.isnan(epsilon):
        raise ValueError(f"epsilon={epsilon}; expected >= 0")
    if not 0 <= delta <= 1:
        raise ValueError(f"delta={delta}; expected 0 <= delta <= 1")
    if math.isinf(epsilon) or delta >= 1:
        return 1.0
    grow, shrink = math.exp(epsilon), math.exp(-epsilon)
    # The two slanted lines cross at x* = (1 − δ)/(e^ε + 1); the first is the minimum before
    # it, the second after it until it reaches 1 at x = 1 − δ; then the curve is 1.
    meet = (1 - delta) / (grow + 1)
    total = _integrate_line(grow, delta, 0.0, meet)
    # second line: 1 − e^{−ε}(1 − δ) + e^{−ε}·x, capped at 1 from x = 1 − δ on
    cap = 1 - delta
    total += _integrate_line(shrink, 1 - shrink * (1 - delta), meet, cap)
    total += 1.0 * (1 - cap)
    return min(1.0, total)


def _integrate_line(slope: float, intercept: float, low: float, high: float) -> float:
    """∫ min(1, slope·x + intercept) dx over [low, high]."""
    if high <= low:
        return 0.0
    if slope > 0:
        reaches_one = (1 - intercept) / slope
        if reaches_one < high:
            return _integrate_line(slope, intercept, low, max(low, reaches_one)) + (
                high - max(low, reaches_one)
            )
    return slope * (high**2 - low**2) / 2 + intercept * (high - low)


def tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """TPR*(FPR): the best true-positive rate at a false-positive rate (the privacy region)."""
    if math.isinf(epsilon):
        return 1.0
    return min(
        1.0,
        math.exp(epsilon) * fpr + delta,
        1 - math.exp(-epsilon) * (1 - delta - fpr),
    )
