"""User-level DP (DP-FedAvg, McMahan et al. 2018): clipping, the noisy mean, and its accountant.

The mechanism, per round:

1. Clients are sampled by **Poisson sampling** with rate ``q = clients_per_round / num_clients``
   (each independently; equivalently a Binomial(N, q) count, then a uniform subset of that size).
   This is the sampling Opacus' RDP and PRV accountants analyse.
2. Each sampled device clips its whole item-side update Δ to L2 norm ``C``:
   ``Δ · min(1, C / ‖Δ‖)`` (:func:`clip_update`). The server clips again: that makes the bound
   hold whatever a device sent, and is a no-op for an honest one. On the simulation's cohort
   engine a node plays many devices: it clips each of its users' updates the same way, sends
   the **sum** of the clipped updates and how many it summed, and the server adds the sums as
   they are (a node's sum is not one user's update, so clipping it to C would be wrong; the
   server only checks ``‖sum‖ ≤ count · C``). Users are then Poisson-sampled on the nodes, from
   a seed the server sends, the same way on every node (``sampling="cohort"``).
3. The server adds ``N(0, (z·C)² I)`` to the **sum** of the clipped updates and divides by the
   **fixed** ``m = clients_per_round`` (= q·N, the expected number of sampled clients):
   ``(Σ clip(Δ_i) + ξ) / m`` (:func:`noisy_mean`). Adding or removing one user changes the sum
   by at most ``C``, so this is the Gaussian mechanism with noise multiplier ``z``; the division
   by a constant is post-processing. Dividing by the number of updates that actually arrived
   would not be: that count depends on who is in the data (it changes by one with the user),
   so it rescales every other user's contribution and is itself released through the result.
   Updates that fail or are rejected count as zero, never shrink the denominator, and the noise
   is added even when no update arrived (skipping the release would reveal that nobody did).
4. FedAvg applies ``server_lr ·`` the noisy mean; FedAdam/FedYogi take it as their
   pseudo-gradient. Both are post-processing of the release.

The guarantee covers the sequence of released item tables. Per-client scalars that the server
logs (train loss, ε, evaluation metrics) are not part of the mechanism, as in Flower's own
wrappers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.privacy.spec import PrivacyAccountingError, PrivacySpec

Update = Mapping[str, np.ndarray]


def update_norm(update: Update) -> float:
    """The global L2 norm over every array of an update (float64, so no array dominates)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))


def clip_update(update: Update, clip_norm: float) -> dict[str, np.ndarray]:
    """``update · min(1, clip_norm / ‖update‖)``, dtypes kept.

    The scale is shrunk by a relative 1e-6 so that float32 rounding of the scaled arrays cannot
    push the norm above ``clip_norm``: the bound is what the noise is calibrated to.
    """
    scale = clip_scale(update, clip_norm)
    return {name: (np.asarray(v) * scale).astype(np.asarray(v).dtype) for name, v in update.items()}


def clip_scale(update: Update, clip_norm: float) -> float:
    """The factor :func:`clip_update` multiplies ``update`` by."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm={clip_norm}; expected > 0")
    norm = update_norm(update)
    return 1.0 if norm <= clip_norm else clip_norm / norm * (1 - 1e-6)


def clipped_sum(
    updates: Sequence[Update], *, like: Update, clip_norm: float
) -> dict[str, np.ndarray]:
    """``Σ clip(Δ_i)`` in float64, shaped like ``like``: the sum the Gaussian noise is calibrated
    to. A cohort node computes the same sum over its own users (``train_cohort``, with the same
    :func:`clip_update`) and sends it; the server adds such sums as they are."""
    total = {name: np.zeros(np.shape(v), dtype=np.float64) for name, v in like.items()}
    for update in updates:
        if set(update) != set(total):
            raise ValueError(f"update arrays {sorted(update)}; expected {sorted(total)}")
        for name, value in clip_update(update, clip_norm).items():
            total[name] += value
    return total


def noisy_mean_of_sum(
    total: Update,
    *,
    like: Update,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """The release: ``(total + N(0, (z·C)² I)) / expected_clients``, typed like ``like``.

    ``total`` must be a sum of per-user updates each clipped to ``clip_norm`` (so one user moves
    it by at most C); it is never clipped here. ``expected_clients`` is the fixed denominator
    (see the module docstring). The noise is drawn whatever ``total`` holds, even nothing.
    """
    if expected_clients < 1:
        raise ValueError(f"expected_clients={expected_clients}; expected >= 1")
    if set(total) != set(like):
        raise ValueError(f"sum arrays {sorted(total)}; expected {sorted(like)}")
    std = noise_multiplier * clip_norm
    released = {}
    for name, reference in like.items():
        value = np.asarray(total[name], dtype=np.float64)
        if value.shape != np.shape(reference):
            raise ValueError(
                f"sum array {name}: shape {value.shape}, expected {np.shape(reference)}"
            )
        noisy = (value + rng.normal(0.0, std, value.shape)) / expected_clients
        released[name] = noisy.astype(np.asarray(reference).dtype)
    return released


def noisy_mean(
    updates: Sequence[Update],
    *,
    like: Update,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """``(Σ clip(Δ_i) + N(0, (z·C)² I)) / expected_clients``, shaped and typed like ``like``.

    ``expected_clients`` is the fixed denominator (see the module docstring); ``updates`` may be
    empty, and the noise is drawn all the same.
    """
    return noisy_mean_of_sum(
        clipped_sum(updates, like=like, clip_norm=clip_norm),
        like=like,
        clip_norm=clip_norm,
        noise_multiplier=noise_multiplier,
        expected_clients=expected_clients,
        rng=rng,
    )


USER_SAMPLING = ("server", "cohort")


@dataclass(frozen=True)
class UserLevelPlan:
    """The server's user-level mechanism for one run, resolved before it starts."""

    clip_norm: float
    noise_multiplier: float
    sample_rate: float  # q = clients_per_round / num_clients
    expected_clients: int  # m = clients_per_round, the fixed denominator
    rounds: int
    delta: float
    accountant: str = "rdp"
    # Who draws the Poisson sample: "server" (it samples client nodes, one user each) or
    # "cohort" (every cohort node draws each user with probability q from the shared seed).
    sampling: str = "server"

    def __post_init__(self) -> None:
        if self.sampling not in USER_SAMPLING:
            raise ValueError(f"sampling='{self.sampling}'; accepted: {', '.join(USER_SAMPLING)}")

    def epsilon_after(self, rounds: int) -> float:
        """User-level ε at ``delta`` after ``rounds`` releases (one Poisson-sampled Gaussian step
        each). Raises :class:`PrivacyAccountingError` if it cannot be computed."""
        if rounds < 0:
            raise ValueError(f"rounds={rounds}; expected >= 0")
        if rounds == 0:
            return 0.0
        from fedrec.privacy.accounting import epsilon_spent

        return epsilon_spent(
            [(self.noise_multiplier, self.sample_rate, rounds)],
            delta=self.delta,
            accountant=self.accountant,
        )


def plan_user_level(
    privacy: PrivacySpec,
    *,
    num_clients: int,
    clients_per_round: int,
    rounds: int,
    sampling: str = "server",
) -> UserLevelPlan:
    """Resolve the noise multiplier (solved from ``user_target_epsilon`` if asked) and check the
    budget for the whole run.

    User-level ε does not depend on the data, only on (z, q, rounds, δ), so a run whose planned
    rounds would exceed ``user_target_epsilon`` is refused here, before any round, rather than
    stopped half-way: the rounds are fixed, so the plan is exactly what will be spent.
    """
    if not 1 <= clients_per_round <= num_clients:
        raise ValueError(
            f"clients_per_round={clients_per_round}; expected 1..{num_clients} (the clients)"
        )
    sample_rate = clients_per_round / num_clients
    noise_multiplier = privacy.user_noise_multiplier
    if privacy.solve_user_noise_multiplier:
        from fedrec.privacy.accounting import solve_noise_multiplier

        noise_multiplier = solve_noise_multiplier(
            privacy.user_target_epsilon, privacy.delta, sample_rate, rounds, privacy.accountant
        )
    plan = UserLevelPlan(
        clip_norm=privacy.user_clip_norm,
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        expected_clients=clients_per_round,
        rounds=rounds,
        delta=privacy.delta,
        accountant=privacy.accountant,
        sampling=sampling,
    )
    target = privacy.user_target_epsilon
    if target is not None:
        planned = plan.epsilon_after(rounds)
        if planned > target:
            raise ValueError(
                f"user-level ε after {rounds} rounds would be {planned:.4g} "
                f"(z={noise_multiplier:g}, q={sample_rate:.4g}, δ={privacy.delta:g}), past "
                f"privacy.user_target_epsilon="
                f"{target:g}; raise privacy.user_noise_multiplier, lower federation.rounds or "
                "clients_per_round, or set privacy.solve_user_noise_multiplier=true"
            )
    return plan


__all__ = [
    "PrivacyAccountingError",
    "UserLevelPlan",
    "clip_update",
    "clipped_sum",
    "noisy_mean",
    "noisy_mean_of_sum",
    "plan_user_level",
    "update_norm",
]
