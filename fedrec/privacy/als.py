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
the frequent items the model trains (the others are ranked by that private popularity).

**Covariance start** (``covariance_start``, :mod:`fedrec.training.als.covariance`): the run's
first two rounds release, instead, the users' items weighted 1/√k (sensitivity 1, std
``count_noise_scale · z``: the popularity that chooses the frequent items) and the item-item
covariance Σ x̂x̂ᵀ over the frequent items (Frobenius sensitivity 1, std ``z`` on every entry of
the m×m matrix, then symmetrised: z on the diagonal, z/√2 off it), whose top eigenvectors are
the first item table; rounds after those are the factor releases above.

Noise is i.i.d. on every entry (the d×d matrices are then symmetrised and projected to PSD:
post-processing). Every user is counted in every round (sampling rate 1: no amplification is
claimed, so the guarantee holds whoever was sampled or dropped out). ε is the configured Opacus
accountant's over that history (``privacy.accountant``): RDP by default (it composes the
releases exactly but converts to (ε, δ) with slack: z = 5.75 at ε = 1 for a covariance start's
two releases), or PRV, which follows the composed Gaussian's privacy curve numerically (z = 5.36
at the same ε, near the analytic Gaussian mechanism's 5.28). A target ε solves z.

**Distributed DP** (``noise_shares`` = t > 0, on SecAgg+ only): each device that trains adds its
own share of that noise, std/√t on every entry, to its masked statistics, from its own entropy
(the run's seed, which the server knows, draws none of it). The server unmasks only the sum, so
what it sees carries the shares of the devices in that sum. A user's own share is not counted as
protecting them (it is what differs between neighbouring worlds), so with ``s`` shares in the sum
the others' add ``(s − 1)/t`` of the variance. The server then tops up the rest
(:func:`topup_fraction`) with its own noise, so the released model is at least as private as
central DP-ALS whoever dropped out; and it accounts separately for what it saw itself
(:meth:`AlsPrivacyPlan.server_view_steps`): ε against the server, finite while two or more shares
arrive, equal to the model's once ``s − 1 ≥ t``. Trust model: the server is honest but curious
(it runs the protocol and the top-up as written and may study what it receives).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from fedrec.privacy.spec import ACCOUNTANTS, PrivacyAccountingError
from fedrec.protocol.settings import AlsSpec
from fedrec.training.als.statistics import COUNTS, GRAM, RHS

PrivacyStep = tuple[float, float, int]


def noise_stds(
    noise_multiplier: float,
    clip_norm: float,
    max_items: int,
    gram_noise_scale: float,
    count_noise_scale: float,
    covariance_start: bool = False,
) -> dict[str, float]:
    """The noise std of each released sum (the table above): one formula for the server's
    noise and the devices' shares. A covariance start's counts are the unit-norm popularity
    (sensitivity 1, not √B)."""
    z, root_b = noise_multiplier, math.sqrt(max_items)
    return {
        "gram": gram_noise_scale * z * clip_norm**2,
        "lhs": z * root_b * clip_norm**2,
        "rhs": z * root_b * clip_norm,
        "counts": count_noise_scale * z * (1.0 if covariance_start else root_b),
        "covariance": z,
    }


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
    noise_shares: int = 0  # t > 0: distributed DP, the devices add shares of std/√t (SecAgg+)
    covariance_start: bool = False  # rounds 1-2 release the popularity and the item covariance
    accountant: str = "rdp"  # the Opacus accountant that turns the releases into ε

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
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(
                f"privacy.accountant={self.accountant!r}; DP-ALS accepts {', '.join(ACCOUNTANTS)}"
            )
        if self.noise_shares < 0 or (self.noise_shares and self.item_grams):
            raise ValueError(
                f"noise_shares={self.noise_shares}: expected >= 0, and distributed DP needs "
                "item_grams=false (SecAgg+ carries no per-item Grams)"
            )
        if self.covariance_start and (self.noise_shares or not self.count_release):
            raise ValueError(
                "covariance_start releases the popularity first (count_release) and has no "
                "distributed mode (noise_shares must be 0)"
            )

    @property
    def distributed(self) -> bool:
        return self.noise_shares > 0

    @property
    def stds(self) -> dict[str, float]:
        """The noise standard deviation of each released sum."""
        return noise_stds(
            self.noise_multiplier,
            self.clip_norm,
            self.max_items,
            self.gram_noise_scale,
            self.count_noise_scale,
            self.covariance_start,
        )

    def server_view_steps(self, shares: int, counts_released: bool) -> list[PrivacyStep]:
        """The mechanisms of one distributed release as the server itself saw them: the sum
        with ``shares`` devices' noise shares in it, of which the other ``shares − 1`` protect a
        user (multiplier × √((shares − 1)/t), at most the plan's own; 0 when no other share
        arrived, which ε reads as no guarantee)."""
        ratio = math.sqrt(min(1.0, max(shares - 1, 0) / self.noise_shares))
        z = self.noise_multiplier * ratio
        steps = [(self.gram_noise_scale * z, 1.0, 1), (z, 1.0, 1)]
        if counts_released:
            steps.append((self.count_noise_scale * z, 1.0, 1))
        return steps

    def history(
        self, releases: int, count_releases: int, covariance_releases: int = 0
    ) -> list[PrivacyStep]:
        """The Gaussian mechanisms of ``releases`` factor rounds, ``count_releases`` count
        releases and ``covariance_releases`` covariance releases as (noise multiplier, sampling
        rate, times): what an Opacus accountant composes."""
        z = self.noise_multiplier
        per_item = 2 if self.item_grams else 1  # (A_j and) b_j
        steps = [(self.gram_noise_scale * z, 1.0, releases), (z, 1.0, per_item * releases)]
        steps.append((self.count_noise_scale * z, 1.0, count_releases))
        steps.append((z, 1.0, covariance_releases))
        return [step for step in steps if step[2] > 0]

    def epsilon_after(
        self, releases: int, count_releases: int, covariance_releases: int = 0
    ) -> float:
        return self.epsilon_of(self.history(releases, count_releases, covariance_releases))

    def mechanisms_per_unit(self, rounds: int) -> float:
        """Σ 1/multiplier² over a whole run in units of 1/z²: the run is as private as one
        Gaussian mechanism of multiplier z/√(this), which is how a target ε solves z."""
        z = self.noise_multiplier
        return sum(
            times * (z / multiplier) ** 2 for multiplier, _, times in self.run_history(rounds)
        )

    def run_history(self, rounds: int) -> list[PrivacyStep]:
        """Every release of a whole run of ``rounds`` rounds."""
        if self.covariance_start:
            return self.history(max(rounds - 2, 0), 1, int(rounds >= 2))
        return self.history(rounds, int(self.count_release))

    def epsilon_of(self, steps: list[PrivacyStep]) -> float:
        """ε at this plan's δ over ``steps`` (its Opacus accountant, imported only here)."""
        from fedrec.privacy.accounting import epsilon_spent

        return epsilon_spent(steps, delta=self.delta, accountant=self.accountant)


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
    noise_shares: int = 0,
    covariance_start: bool = False,
    accountant: str = "rdp",
) -> AlsPrivacyPlan:
    """The plan of a run: ``noise_multiplier`` as given, or the smallest one that keeps the
    whole run within ``target_epsilon`` under ``accountant``: the run's Gaussian mechanisms
    compose as one of multiplier z/√(mechanisms_per_unit), so z is that one's solved σ scaled
    back, then checked on the whole history."""
    if noise_multiplier is None and target_epsilon is None:
        raise ValueError("DP-ALS needs a noise multiplier or a target ε")
    plan = AlsPrivacyPlan(
        clip_norm,
        max_items,
        1.0 if noise_multiplier is None else float(noise_multiplier),
        delta,
        gram_noise_scale,
        count_release,
        item_grams,
        count_noise_scale,
        noise_shares,
        covariance_start,
        accountant,
    )
    if target_epsilon is not None:
        from fedrec.privacy.accounting import solve_noise_multiplier

        single = solve_noise_multiplier(float(target_epsilon), delta, 1.0, 1, accountant)
        solved = single * math.sqrt(plan.mechanisms_per_unit(rounds))  # plan's z is 1 here
        plan = dataclasses.replace(plan, noise_multiplier=solved)
        spent = plan.epsilon_of(plan.run_history(rounds))
        if spent > target_epsilon * (1 + 1e-6) + 0.01:
            raise PrivacyAccountingError(
                f"the solved noise gives ε={spent:.4g} over {rounds} rounds, above the "
                f"target {target_epsilon}"
            )
    return plan


def add_noise(values: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``values + N(0, std²)`` on every entry, in float64."""
    return np.asarray(values, dtype=np.float64) + rng.normal(0.0, std, size=np.shape(values))


def topup_fraction(shares: int, noise_shares: int) -> float:
    """The share of each release's noise variance the server still adds itself when ``shares``
    devices' noise shares are in the sum it uses: what the other ``shares − 1`` (each 1/t of
    it) do not cover. 1 with no distributed noise (``noise_shares`` 0)."""
    if noise_shares <= 0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - max(shares - 1, 0) / noise_shares))


def noise_share(
    dense: dict[str, np.ndarray], spec: AlsSpec, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """One device's dense statistics (:data:`~fedrec.training.als.statistics.SECURE_NAMES`) with
    its share of DP-ALS's noise added: std/√t on every entry of the Gram and the right-hand
    sides, and of the counts in the round that releases them (other rounds send no counts: the
    server uses only the one release). ``rng`` None: fresh OS entropy, never the run's seed."""
    if spec.noise_shares <= 0:
        raise ValueError("als.noise_shares is 0: this round asks for no noise shares")
    rng = rng or np.random.default_rng()
    stds = noise_stds(
        spec.noise_multiplier,
        spec.clip_norm,
        spec.max_items,
        spec.gram_noise_scale,
        spec.count_noise_scale,
    )
    root_t = math.sqrt(spec.noise_shares)
    noisy = {
        GRAM: add_noise(dense[GRAM], stds["gram"] / root_t, rng),
        RHS: add_noise(dense[RHS], stds["rhs"] / root_t, rng),
        COUNTS: add_noise(dense[COUNTS], stds["counts"] / root_t, rng)
        if spec.release_counts
        else np.zeros_like(dense[COUNTS]),
    }
    return {name: value.astype(np.asarray(dense[name]).dtype) for name, value in noisy.items()}


SHARE_RANGE_STDS = 7.0  # a share beyond 7 std: ~3e-12 per value, so SecAgg+ clips none in practice


def check_share_range(plan: AlsPrivacyPlan, clipping_range: float) -> None:
    """Refuse a SecAgg+ ``clipping_range`` that would clip the devices' noisy statistics: a
    masked value is at most max(1, Γ, Γ²) (a count, a factor entry, a Gram entry) plus its
    noise share, and a clipped share is noise the sum no longer carries."""
    share = max(plan.stds[name] for name in ("gram", "rhs", "counts")) / math.sqrt(
        plan.noise_shares
    )
    needed = max(1.0, plan.clip_norm, plan.clip_norm**2) + SHARE_RANGE_STDS * share
    if clipping_range < needed:
        raise ValueError(
            f"secure_aggregation.clipping_range={clipping_range:g} would clip the devices' "
            f"noise shares (std up to {share:.4g} on statistics up to "
            f"{max(1.0, plan.clip_norm**2):g}): set it to at least {needed:.4g}"
        )
