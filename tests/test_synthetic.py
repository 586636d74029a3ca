"""The synthetic generator: deterministic, and shaped like the MovieLens set it stands in for."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data import SyntheticShape, generate


def test_same_seed_same_log_other_seed_other_log():
    a, b, c = generate("small", seed=1), generate("small", seed=1), generate("small", seed=2)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.timestamps, b.timestamps)
    assert not np.array_equal(a.items, c.items)


def test_ml1m_preset_has_movielens_1m_shape():
    """The preset's calibration targets, MovieLens-1M's published statistics: 1,000,209 ratings,
    >= 20 per user with median 96, the top item rated by 56.8% of users, 114 items rated once,
    median item count 123.5."""
    log = generate("ml-1m", seed=0)
    assert (log.num_users, log.num_items) == (6040, 3706)  # every item is in the log
    assert abs(len(log) - 1_000_209) / 1_000_209 < 0.03
    per_user = np.bincount(log.users)
    assert per_user.min() >= 20
    assert 80 <= np.median(per_user) <= 115
    assert np.median(per_user) < per_user.mean() / 1.3  # long-tailed activity (ML-1M: 96, 165.6)
    assert per_user.max() <= 0.6 * log.num_items
    popularity = np.bincount(log.items, minlength=log.num_items)
    assert 0.50 <= popularity.max() / log.num_users <= 0.62
    assert (popularity == 1).sum() >= 1  # a long tail down to single interactions
    assert 80 <= np.median(popularity) <= 180
    assert set(np.unique(log.ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(np.unique(log.ratings)) >= 4
    assert log.notes == ()  # no duplicate (user, item) rows are generated


def test_taste_clusters_make_users_predictable():
    """Users sharing a taste cluster overlap far more than random pairs would."""
    shape = SyntheticShape(300, 500, 40, min_interactions=10, num_taste_clusters=5)
    log = generate(shape, seed=0)
    matrix = np.zeros((log.num_users, log.num_items))
    matrix[log.users, log.items] = 1
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    similarity = matrix @ matrix.T
    np.fill_diagonal(similarity, 0)
    nearest = similarity.max(axis=1).mean()
    shuffled = np.stack([np.random.default_rng(i).permutation(row) for i, row in enumerate(matrix)])
    shuffled_similarity = shuffled @ shuffled.T
    np.fill_diagonal(shuffled_similarity, 0)
    assert nearest > 1.5 * shuffled_similarity.max(axis=1).mean()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="mean_interactions"):
        SyntheticShape(10, 50, 100)
    with pytest.raises(ValueError, match="unknown synthetic preset 'ml-25m'"):
        generate("ml-25m")
