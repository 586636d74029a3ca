"""The most-popular ranking released with differential privacy: the floor for private models.

A ranking by item counts needs no user embedding and no training, so its privacy cost is one
release of each user's item indicator (1 for every item in the log, counted once per user). A
private MF model that scores below the private popularity ranking *at the same ε and under the
same guarantee* has bought nothing with its budget; ``fedrec sweep`` shows both side by side.

- **record-level** (:func:`record_level_counts`, noise on the device, as DP-SGD): the device
  adds ``N(0, σ²)`` to every entry of its indicator before it leaves. Adding or removing one
  interaction changes one entry by 1, so this is the Gaussian mechanism with L2 sensitivity 1
  and noise multiplier σ: in the accountant's terms one step at sampling rate 1, charged to the
  device's ledger as ``(σ, 1.0, 1)``.
- **user-level** (:func:`user_level_counts`, noise at the server, as DP-FedAvg): each
  indicator is clipped to L2 norm 1 (scaled by ``1 / √(items in the log)``), and the server adds
  ``N(0, z²)`` to their sum: adding or removing a user moves the sum by at most 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrec.privacy.accounting import solve_noise_multiplier
from fedrec.privacy.user_level import clip_update, noisy_mean_of_sum

RELEASE_SAMPLE_RATE, RELEASE_STEPS = 1.0, 1  # one release of everything, as a ledger entry


def item_indicator(train_items: np.ndarray, num_items: int) -> np.ndarray:
    """1.0 for each item in the user's log (once, however often it occurs), else 0."""
    items = np.asarray(train_items, dtype=np.int64)
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"train_items hold ids outside [0, {num_items})")
    indicator = np.zeros(num_items, dtype=np.float64)
    indicator[items] = 1.0
    return indicator


def release_noise_multiplier(target_epsilon: float, delta: float, accountant: str = "rdp") -> float:
    """The smallest σ for which one release at sensitivity 1 spends at most ``target_epsilon``."""
    return solve_noise_multiplier(
        target_epsilon, delta, RELEASE_SAMPLE_RATE, RELEASE_STEPS, accountant
    )


def record_level_counts(
    train_items: np.ndarray, num_items: int, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """What one device releases: its indicator plus its own Gaussian noise on every entry."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier={noise_multiplier}; a release needs noise > 0")
    return item_indicator(train_items, num_items) + rng.normal(0.0, noise_multiplier, num_items)


def user_level_counts(
    logs: Sequence[np.ndarray], num_items: int, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """The server's release: the sum of every user's indicator clipped to norm 1, plus
    ``N(0, z²)`` per item (through the same clipping and noisy sum as DP-FedAvg)."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier={noise_multiplier}; a release needs noise > 0")
    like = {"counts": np.zeros(num_items)}
    total = {"counts": np.zeros(num_items)}
    for items in logs:
        total["counts"] += clip_update({"counts": item_indicator(items, num_items)}, 1.0)["counts"]
    released = noisy_mean_of_sum(
        total,
        like=like,
        clip_norm=1.0,
        noise_multiplier=noise_multiplier,
        expected_clients=1,
        rng=rng,
    )
    return released["counts"]
