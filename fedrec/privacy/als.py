"""DP-ALS (Chien et al., ICML 2021): joint, user-level DP for federated ALS, and its accountant.

Trust model, stated plainly: the noise is added **once, to the aggregate** of the users'
statistics, by whoever computes the aggregate. The released item tables (and the frequent-item
release) are (ε, δ)-DP with respect to adding or removing one user's whole log, so the guarantee
holds against everyone who sees the model: other users, app builds, analysts. It does **not**
protect a user against the server itself when the server sees single replies: a user's
statistics (``u uᵀ``, ``u`` per item) reveal their factor and which items they released. That
needs secure aggregation (the server sees only sums) and, against a server that sees the
noiseless sum, noise shares added on the devices (distributed DP).

Each release, per round, is three Gaussian mechanisms on sums whose L2 sensitivity one user
bounds (:mod:`fedrec.training.als.statistics`: factor clipped to Γ, at most B items):

====================  ===============  ============================  =====================
sum                   sensitivity      noise std                     noise multiplier
====================  ===============  ============================  =====================
``G = Σ u uᵀ``         Γ²               ``gram_noise_scale · z · Γ²``  ``gram_noise_scale · z``
all ``A_j = Σ u uᵀ``   √B · Γ²          ``z · √B · Γ²``               z
all ``b_j = Σ u``      √B · Γ           ``z · √B · Γ``                z
====================  ===============  ============================  =====================

plus, once, the item counts ``n_j`` (sensitivity √B, std ``count_noise_scale·z·√B``) that choose
the frequent items the model trains (the others are ranked by that private popularity). Noise is
i.i.d. on every entry (the d×d matrices are then symmetrised and projected to PSD:
post-processing). Every user is counted in every round (sampling rate 1: no amplification is
claimed, so the guarantee holds whoever was sampled or dropped out). RDP composes the releases
exactly; ε is Opacus' RDP accountant's over that history, and a target ε solves z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedrec.privacy.spec import PrivacyAccountingError

PrivacyStep = tuple[float, float, int]


@dataclass(frozen=True)
class AlsPrivacyPlan:
    """The noise of a DP-ALS run: ``z`` and the bounds it is calibrated to."""

    clip_norm: float  # Γ
    max_items: int  # B
    noise_multiplier: float  # z
    delta: float
    gram_noise_scale: float = 4.0  # G is a sum over every user: a larger multiplier costs little
    count_release: bool = True
    item_grams: bool = True  # False: the A_j are not released (the server uses n_j · G / N)
    count_noise_scale: float = 1.0  # the one count release's multiplier, relative to z

    def __post_init__(self) -> None:
        if not self.clip_norm > 0 or self.max_items < 1:
            raise ValueError(
                "DP-ALS needs als.clip_norm > 0 and als.max_items >= 1 (they bound one user's "
                f"contribution); got clip_norm={self.clip_norm}, max_items={self.max_items}"
            )
        if not min(self.noise_multiplier, self.gram_noise_scale, self.count_noise_scale) > 0:
            raise ValueError(
                "DP-ALS needs a noise multiplier, gram_noise_scale and count_noise_scale > 0"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta}; expected 0 < delta < 1")

    @property
    def stds(self) -> dict[str, float]:
        """The noise standard deviation of each released sum."""
        z, root_b, clip = self.noise_multiplier, math.sqrt(self.max_items), self.clip_norm
        return {
            "gram": self.gram_noise_scale * z * clip**2,
            "lhs": z * root_b * clip**2,
            "rhs": z * root_b * clip,
            "counts": self.count_noise_scale * z * root_b,
        }

    def history(self, releases: int, count_releases: int) -> list[PrivacyStep]:
        """The Gaussian mechanisms of ``releases`` rounds and ``count_releases`` count releases
        as (noise multiplier, sampling rate, times): what an Opacus accountant composes."""
        z = self.noise_multiplier
        per_item = 2 if self.item_grams else 1  # (A_j and) b_j
        steps = [(self.gram_noise_scale * z, 1.0, releases), (z, 1.0, per_item * releases)]
        steps.append((self.count_noise_scale * z, 1.0, count_releases))
        return [step for step in steps if step[2] > 0]

    def epsilon_after(self, releases: int, count_releases: int) -> float:
        from fedrec.privacy.accounting import epsilon_spent

        return epsilon_spent(self.history(releases, count_releases), delta=self.delta)


def mechanisms_per_unit(
    rounds: int,
    gram_noise_scale: float,
    count_release: bool,
    item_grams: bool = True,
    count_noise_scale: float = 1.0,
) -> float:
    """Σ 1/multiplier² of a whole run in units of 1/z²: the run is as private as one Gaussian
    mechanism of multiplier z/√(this), which is how a target ε solves z."""
    per_item = 2 if item_grams else 1
    counts = 1 / count_noise_scale**2 if count_release else 0.0
    return rounds * (per_item + 1 / gram_noise_scale**2) + counts


def plan_dp_als(
    *,
    clip_norm: float,
    max_items: int,
    delta: float,
    rounds: int,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    gram_noise_scale: float = 4.0,
    count_release: bool = True,
    item_grams: bool = True,
    count_noise_scale: float = 1.0,
) -> AlsPrivacyPlan:
    """The plan of a run: ``noise_multiplier`` as given, or the smallest one that keeps the
    whole run within ``target_epsilon`` (solved on the run's exact RDP composition)."""
    if target_epsilon is not None:
        from fedrec.privacy.accounting import solve_noise_multiplier

        units = mechanisms_per_unit(
            rounds, gram_noise_scale, count_release, item_grams, count_noise_scale
        )
        single = solve_noise_multiplier(float(target_epsilon), delta, 1.0, 1)
        noise_multiplier = single * math.sqrt(units)
    if noise_multiplier is None:
        raise ValueError("DP-ALS needs a noise multiplier or a target ε")
    plan = AlsPrivacyPlan(
        clip_norm,
        max_items,
        float(noise_multiplier),
        delta,
        gram_noise_scale,
        count_release,
        item_grams,
        count_noise_scale,
    )
    if target_epsilon is not None:
        spent = plan.epsilon_after(rounds, int(count_release))
        if spent > target_epsilon * (1 + 1e-6) + 0.01:
            raise PrivacyAccountingError(
                f"the solved noise gives ε={spent:.4g} over {rounds} rounds, above the "
                f"target {target_epsilon}"
            )
    return plan


def add_noise(values: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``values + N(0, std²)`` on every entry, in float64."""
    return np.asarray(values, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(values))
