"""The seeds a device derives for a round: reproducible simulations without shared state.

Every simulated device (and a deployed one in a seeded run) draws its round from a seed made of
the run's seed, its user key, the round and the purpose, so two engines, a resumed run and a
replayed request draw the very same numbers.
"""

from __future__ import annotations

import numpy as np

TRAIN_SEED, EVAL_SEED = 1, 2  # purposes


def derived_seed(seed: int, user_key: int, server_round: int, purpose: int) -> int:
    """A 63-bit seed from (seed, user, round, purpose)."""
    sequence = np.random.SeedSequence([seed, user_key, server_round, purpose])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


def user_seed(run_seed: int, user_key: int, server_round: int, purpose: int) -> int | None:
    """The seed of one user's round; None (fresh randomness) when the run's seed is negative."""
    if run_seed < 0:
        return None
    return derived_seed(run_seed, user_key, server_round, purpose)
