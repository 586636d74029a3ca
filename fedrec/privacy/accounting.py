"""Privacy accounting over a whole run: ε from the full history of DP-SGD steps.

A new Opacus ``PrivacyEngine`` per round starts its accountant at zero, which would report the
ε of one round. The history ``[(noise_multiplier, sample_rate, steps), ...]`` is therefore kept
by the client across rounds and every ε is computed from all of it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.accountant import IAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.accountants.analysis.rdp import get_privacy_spent as rdp_privacy_spent

from fedrec.privacy.spec import ACCOUNTANTS, PrivacyAccountingError

PrivacyStep = tuple[float, float, int]  # (noise_multiplier, sample_rate, num_steps)
RDP_ORDERS = RDPAccountant.DEFAULT_ALPHAS


def new_accountant(name: str, history: Sequence[PrivacyStep] = ()) -> IAccountant:
    """An Opacus accountant of kind ``name`` that already holds ``history``."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant='{name}'; accepted: {', '.join(ACCOUNTANTS)}")
    accountant = create_accountant(name)
    accountant.history = [(float(n), float(q), int(s)) for n, q, s in history]
    return accountant


def epsilon_spent(
    history: Sequence[PrivacyStep], *, delta: float, accountant: str = "rdp"
) -> float:
    """ε at ``delta`` after every step in ``history`` (0 when nothing was spent)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta}; expected 0 < delta < 1")
    if not history:
        return 0.0
    if any(n <= 0 for n, _, _ in history):
        return math.inf  # a step without noise has no finite guarantee
    key = tuple((float(n), float(q), int(s)) for n, q, s in history)
    if accountant == "rdp":
        return _rdp_epsilon(key, delta)
    return _cached_epsilon(key, delta, accountant)


def clear_caches() -> None:
    """Forget every cached privacy curve and ε (a benchmark's cold start, as a fresh worker)."""
    _rdp_of_one_step.cache_clear()
    _rdp_epsilon.cache_clear()
    _cached_epsilon.cache_clear()


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """The RDP curve of one subsampled Gaussian step at Opacus' default orders."""
    return compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDP_ORDERS)


@functools.lru_cache(maxsize=65536)
def _rdp_epsilon(history: tuple[PrivacyStep, ...], delta: float) -> float:
    """Opacus' RDP accountant, term for term, with each (σ, q) step's curve computed once.

    Opacus computes ``steps × curve(q, σ)`` for every entry and sums the entries in order; so
    does this, so ε is the same float. Users of a federation share few distinct (σ, q) pairs
    (one per log-size bucket), while their histories differ: caching whole histories alone
    recomputes the curves for every new one (~0.1 s each). Whole histories are cached too: a
    cohort node's users of one log-size bucket share theirs (~0.1 ms each to convert otherwise).
    """
    try:
        rdp = sum([steps * _rdp_of_one_step(n, q) for n, q, steps in history])
        epsilon, _ = rdp_privacy_spent(orders=RDP_ORDERS, rdp=rdp, delta=delta)
    except Exception as err:  # the analysis raises assorted numeric errors
        raise PrivacyAccountingError(f"could not compute epsilon (rdp): {err}") from err
    if math.isnan(epsilon):
        raise PrivacyAccountingError(f"rdp accountant returned NaN for {history}")
    return float(epsilon)


@functools.lru_cache(maxsize=65536)
def _cached_epsilon(history: tuple[PrivacyStep, ...], delta: float, accountant: str) -> float:
    """ε is a pure function of (history, δ, accountant). Users with the same log size share a
    history, so one computation (~0.1 s with RDP) serves all of them in a worker process."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # PRV at q = 1: see below
            epsilon = float(new_accountant(accountant, history).get_epsilon(delta=delta))
    except Exception as err:  # accountants raise assorted numeric errors
        raise PrivacyAccountingError(f"could not compute epsilon ({accountant}): {err}") from err
    if math.isnan(epsilon):
        raise PrivacyAccountingError(f"{accountant} accountant returned NaN for {history}")
    return epsilon


@functools.lru_cache(maxsize=4096)
def solve_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier whose ε after ``steps`` at ``sample_rate`` is ≤ target.

    Opacus' binary search (tolerance 0.01 in ε, always on the safe side). Cached: devices with
    equal log sizes ask the same question.
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not target_epsilon > 0 or steps < 1 or not 0 < sample_rate <= 1:
        raise ValueError(
            f"cannot solve σ for ε={target_epsilon}, steps={steps}, sample_rate={sample_rate}"
        )
    try:
        # PRV's privacy-loss distribution takes log(1 − q), −inf at q = 1, on a branch that
        # np.where then discards: numpy's warning says nothing about the result
        with np.errstate(divide="ignore", invalid="ignore"):
            noise = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        return float(noise)
    except Exception as err:  # opacus raises ValueError when no σ reaches the target
        raise PrivacyAccountingError(
            f"no noise multiplier reaches ε={target_epsilon}: {err}"
        ) from err
