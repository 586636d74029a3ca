"""Who takes part in a round: one sampler, the server's, for every engine and runner.

Users are indices ``0..N-1`` of the federation's population (which node holds which user is the
transport's business). A training round takes ``clients_per_round`` users uniformly without
replacement, or, for user-level DP, each user independently with probability
``q = clients_per_round / N`` (Poisson sampling, what the accountant analyses; the count varies
and may be 0). Evaluation takes ``eval_clients_per_round`` users. The draw is a function of
(seed, round, purpose) alone: a resumed run, or the same seed on another engine, samples the
same users.
"""

from __future__ import annotations

import numpy as np


def resolve_seed(seed: int) -> int:
    """The run's sampling seed: ``seed``, or fresh entropy once for the whole run if negative."""
    return seed if seed >= 0 else int(np.random.SeedSequence().entropy % 2**31)


def sample_users(
    seed: int,
    server_round: int,
    population: int,
    count: int,
    *,
    poisson: bool = False,
    evaluation: bool = False,
) -> np.ndarray:
    """The round's users, sorted (indices into the population)."""
    if not 0 <= count <= population:
        raise ValueError(f"{count} users per round out of {population}")
    rng = np.random.default_rng([seed, server_round, int(evaluation)])
    if poisson and not evaluation:
        return np.flatnonzero(rng.random(population) < count / population)
    if count >= population:
        return np.arange(population)
    return np.sort(rng.choice(population, count, replace=False))
