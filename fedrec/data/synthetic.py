"""A seeded synthetic interaction log with the structure of real recommendation data.

MovieLens-1M and larger cannot be shipped or fetched here, and the README's first command must run
with no data at all, so work at scale uses this generator. It reproduces what makes real logs
hard: long-tailed item popularity, users whose tastes cluster, long-tailed activity per user,
ratings that follow taste, and timestamps (so temporal splits are meaningful).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.data.log import InteractionLog, build_log
from fedrec.registry import Registry


@dataclass(frozen=True)
class SyntheticShape:
    """Size and structure of a generated log. ``mean_interactions`` is per user."""

    num_users: int
    num_items: int
    mean_interactions: float
    min_interactions: int = 20
    num_taste_clusters: int = 20
    latent_dim: int = 16
    popularity_exponent: float = 1.1  # Zipf exponent of item popularity
    taste_strength: float = 1.5  # how much taste beats popularity when choosing items
    activity_sigma: float = 1.0  # log-normal spread of per-user activity

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.num_items < 2:
            raise ValueError("synthetic shape needs num_users >= 1 and num_items >= 2")
        if not 1 <= self.min_interactions <= self.num_items:
            raise ValueError("min_interactions must lie in [1, num_items]")
        if not self.min_interactions <= self.mean_interactions <= self.num_items:
            raise ValueError("mean_interactions must lie in [min_interactions, num_items]")


SHAPES: Registry[SyntheticShape] = Registry("synthetic preset")
# MovieLens-1M: 6,040 users, 3,706 rated items, 1,000,209 ratings, every user >= 20.
SHAPES.register("ml-1m")(SyntheticShape(6040, 3706, 1_000_209 / 6040))
# MovieLens-100K: 943 users, 1,682 items, 100,000 ratings.
SHAPES.register("ml-100k")(SyntheticShape(943, 1682, 100_000 / 943))
# The embedded default: small enough for a laptop demo in a minute, shaped like the real ones.
SHAPES.register("small")(SyntheticShape(200, 400, 40, min_interactions=10, num_taste_clusters=8))


def generate(shape: SyntheticShape | str, *, seed: int = 0) -> InteractionLog:
    """Draw a log. Same shape and seed → the same log, bit for bit."""
    if isinstance(shape, str):
        shape = SHAPES.get(shape)
    rng = np.random.default_rng(seed)
    n_users, n_items = shape.num_users, shape.num_items

    # Items: a taste vector near one cluster centre, and a Zipf popularity over a random order.
    centres = rng.normal(size=(shape.num_taste_clusters, shape.latent_dim))
    item_cluster = rng.integers(shape.num_taste_clusters, size=n_items)
    item_taste = centres[item_cluster] + 0.5 * rng.normal(size=(n_items, shape.latent_dim))
    item_taste /= np.linalg.norm(item_taste, axis=1, keepdims=True)
    popularity_rank = rng.permutation(n_items) + 1
    log_popularity = -shape.popularity_exponent * np.log(popularity_rank)

    # Users: a mixture of two clusters' tastes, and a log-normal activity level.
    first, second = rng.integers(shape.num_taste_clusters, size=(2, n_users))
    mix = rng.uniform(0.5, 1.0, size=(n_users, 1))
    user_taste = mix * centres[first] + (1 - mix) * centres[second]
    user_taste += 0.3 * rng.normal(size=user_taste.shape)
    user_taste /= np.linalg.norm(user_taste, axis=1, keepdims=True)
    activity = _activity(rng, shape)

    users, items, ratings, timestamps = [], [], [], []
    start = 956_703_932  # MovieLens-1M's first timestamp, so dates look familiar
    chunk = max(1, 2_000_000 // n_items)
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        affinity = user_taste[lo:hi] @ item_taste.T  # cosine in [-1, 1]
        logits = log_popularity + shape.taste_strength * 3.0 * affinity
        # Gumbel top-k: sampling without replacement in proportion to exp(logits).
        keys = logits + rng.gumbel(size=logits.shape)
        for row, user in enumerate(range(lo, hi)):
            count = int(activity[user])
            chosen = np.argpartition(-keys[row], count - 1)[:count]
            users.append(np.full(count, user, dtype=np.int64))
            items.append(chosen)
            noise = rng.normal(scale=0.9, size=count)
            stars = 3.3 + 2.0 * affinity[row, chosen] + noise
            ratings.append(np.clip(np.rint(stars), 1, 5).astype(np.float32))
            first_day = start + rng.integers(0, 3 * 365 * 86_400)
            span = rng.exponential(60 * 86_400)
            timestamps.append(
                np.sort(first_day + rng.uniform(0, span, size=count)).astype(np.int64)
            )
    # Raw ids are 1-based like MovieLens, and the rows arrive in time order per user.
    return build_log(
        np.concatenate(users) + 1,
        np.concatenate(items) + 1,
        np.concatenate(ratings),
        np.concatenate(timestamps),
        source=f"synthetic(seed={seed}, users={n_users}, items={n_items})",
    )


def _activity(rng: np.random.Generator, shape: SyntheticShape) -> np.ndarray:
    """Interactions per user: log-normal, at least ``min_interactions``, mean as asked."""
    extra_mean = shape.mean_interactions - shape.min_interactions
    cap = int(0.6 * shape.num_items) - shape.min_interactions
    if extra_mean <= 0:
        return np.full(shape.num_users, shape.min_interactions)
    raw = rng.lognormal(0.0, shape.activity_sigma, size=shape.num_users)
    extra = np.minimum(raw * extra_mean / raw.mean(), cap)
    # One rescale after capping keeps the mean close to the target without breaking the cap.
    extra = np.minimum(extra * extra_mean / max(extra.mean(), 1e-9), cap)
    return (shape.min_interactions + np.rint(extra)).astype(np.int64)


def load_synthetic(
    path: str | None = None,
    *,
    preset: str = "small",
    seed: int = 0,
    on_duplicate: str = "keep_latest",
) -> InteractionLog:
    """The loader-registry face of :func:`generate`: ``dataset.name=synthetic``."""
    if path:
        raise ValueError("the synthetic dataset is generated, not read: leave dataset.path empty")
    return generate(preset, seed=seed)
