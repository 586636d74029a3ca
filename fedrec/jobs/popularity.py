"""The private most-popular ranking of a federation, for ``fedrec sweep``'s reference rows.

Each point is the same federation (users, split, δ, accountant) as the MF run it stands beside,
released with the mechanism of :mod:`fedrec.privacy.popularity` under the same guarantee and
budget, then scored by every user on their own test items exactly as the devices score the MF
model (full ranking without their training items, plus the sampled metrics). It is computed in
process: one release per user, no training, no Flower round; each device's noise is drawn from
its own generator, seeded by (run seed, user key) as the simulated devices' noise is (a
negative seed: fresh entropy, as in ``fedrec simulate``).
"""

from __future__ import annotations

import math

import numpy as np

from fedrec.config.simulate import SimulateJobConfig
from fedrec.eval.metrics import average_over_users, ranking_metrics_for_user
from fedrec.jobs.simulate import prepare_federation
from fedrec.privacy.accounting import epsilon_spent
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.popularity import (
    RELEASE_SAMPLE_RATE,
    RELEASE_STEPS,
    item_indicator,
    record_level_counts,
    release_noise_multiplier,
    user_level_counts,
)

POPULARITY_MODES = ("none", "record", "user")


def popularity_point(
    cfg: SimulateJobConfig, mode: str, epsilon: float, seed: int
) -> dict[str, float]:
    """Metrics of the popularity ranking released in ``mode`` at budget ``epsilon`` (``inf`` and
    mode ``none``: the exact counts), with ``epsilon_spent`` as the accountant computes it."""
    if mode not in POPULARITY_MODES:
        raise ValueError(f"mode='{mode}'; accepted: {', '.join(POPULARITY_MODES)}")
    if (mode == "none") != math.isinf(epsilon):
        raise ValueError(f"mode '{mode}' with ε={epsilon}: only mode none has no budget")
    split, source, _ = prepare_federation(cfg)
    num_items = split.train.num_items
    users = [source.local_data({"partition-id": p}) for p in range(len(source))]
    privacy, spent = cfg.privacy, 0.0
    if mode == "none":
        counts = sum(item_indicator(data.train_items, num_items) for _, data in users)
    elif mode == "record":
        sigma = release_noise_multiplier(epsilon, privacy.delta, privacy.accountant)
        # Every device's ledger gets the same single entry (σ, 1, 1 step): charge it once.
        ledger = PrivacyLedger(privacy.accountant, privacy.delta)
        ledger.check_budget(epsilon, sigma, RELEASE_SAMPLE_RATE, RELEASE_STEPS)
        spent = ledger.charge(1, sigma, RELEASE_SAMPLE_RATE, RELEASE_STEPS).epsilon
        counts = np.zeros(num_items)
        for key, data in users:
            rng = _generator(seed, key)
            counts += record_level_counts(data.train_items, num_items, sigma, rng)
    else:
        z = release_noise_multiplier(epsilon, privacy.delta, privacy.accountant)
        spent = epsilon_spent(
            [(z, RELEASE_SAMPLE_RATE, RELEASE_STEPS)],
            delta=privacy.delta,
            accountant=privacy.accountant,
        )
        logs = [data.train_items for _, data in users]
        counts = user_level_counts(logs, num_items, z, _generator(seed, None))
    scored = [
        ranking_metrics_for_user(
            counts,
            train_items=data.train_items,
            test_items=data.test_items,
            negatives=data.negatives,
            full_metrics=cfg.eval.full_metrics,
            sampled_metrics=cfg.eval.sampled_metrics if data.negatives is not None else [],
        )
        for _, data in users
        if len(data.test_items)
    ]
    return average_over_users(scored) | {"epsilon_spent": spent}


def _generator(seed: int, key: int | None) -> np.random.Generator:
    if seed < 0:
        return np.random.default_rng()
    return np.random.default_rng([seed] if key is None else [seed, key])
