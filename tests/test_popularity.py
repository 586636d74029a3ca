"""The private most-popular ranking: its mechanism, its budget, and its scores on ML-100K."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ML100K_SHAPED

from fedrec.config import compose
from fedrec.data import load_split
from fedrec.eval import evaluate_scores
from fedrec.jobs.popularity import popularity_point
from fedrec.privacy import epsilon_spent
from fedrec.privacy.popularity import (
    item_indicator,
    record_level_counts,
    release_noise_multiplier,
    user_level_counts,
)

ALL_ML100K_SHAPED = [*ML100K_SHAPED, "federation.num_clients=0"]


def test_an_item_counts_once_per_user_and_foreign_ids_are_refused():
    assert item_indicator(np.array([3, 1, 3, 3]), 5).tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="outside \\[0, 5\\)"):
        item_indicator(np.array([5]), 5)


@pytest.mark.parametrize("target", [0.5, 1.0, 8.0])
def test_the_solved_release_spends_close_to_but_not_over_the_target(target):
    sigma = release_noise_multiplier(target, 1e-5)
    spent = epsilon_spent([(sigma, 1.0, 1)], delta=1e-5)
    assert 0.97 * target <= spent <= target
    # The Gaussian mechanism at sensitivity 1: the classic bound sqrt(2 ln(1.25/δ)) / ε holds
    # for ε < 1 and is looser than the RDP solve.
    if target < 1:
        assert sigma <= math.sqrt(2 * math.log(1.25 / 1e-5)) / target


def test_each_device_adds_noise_of_the_solved_scale_to_its_indicator():
    items = np.array([0, 2, 2])
    draws = np.stack(
        [record_level_counts(items, 4, 2.0, np.random.default_rng(s)) for s in range(4000)]
    )
    assert np.allclose(draws.mean(0), [1, 0, 1, 0], atol=0.1)
    assert np.allclose(draws.std(0), 2.0, rtol=0.05)
    with pytest.raises(ValueError, match="needs noise > 0"):
        record_level_counts(items, 4, 0.0, np.random.default_rng(0))


def test_user_level_clips_each_log_to_norm_one_and_adds_one_draw_to_the_sum():
    logs = [np.array([0, 1, 2, 3]), np.array([0])]  # 0.5 per item, and 1 for item 0
    draws = np.stack(
        [user_level_counts(logs, 2000, 1.5, np.random.default_rng(s)) for s in range(200)]
    )
    assert np.allclose(draws[:, :4].mean(0), [1.5, 0.5, 0.5, 0.5], atol=0.25)
    assert np.std(draws[:, 4:]) == pytest.approx(1.5, rel=0.02)  # no user holds these items


def test_exact_popularity_scored_on_the_devices_matches_the_central_evaluation():
    # The device-side scoring (each user's full ranking without their training items, and the
    # sampled metrics) must give what evaluate_scores gives for the same counts on the split.
    cfg = compose("simulate", ALL_ML100K_SHAPED)
    split = load_split(cfg.dataset)
    counts = np.bincount(split.train.items, minlength=split.train.num_items).astype(float)
    central = evaluate_scores(lambda users: np.tile(counts, (len(users), 1)), split, cfg.eval)
    on_devices = popularity_point(cfg, "none", math.inf, 0)
    for name in ("ndcg@10", "recall@20", "sampled_hr@10"):
        assert on_devices[name] == pytest.approx(central[name], abs=1e-12)
    assert on_devices["epsilon_spent"] == 0


def test_exact_popularity_on_the_real_ml100k_gives_the_recorded_score(ml100k_dir):
    cfg = compose("simulate", ["dataset=ml100k", "federation.num_clients=0"])
    on_devices = popularity_point(cfg, "none", math.inf, 0)
    assert on_devices["ndcg@10"] == pytest.approx(0.0439, abs=5e-5)  # benchmarks/RESULTS.md


def test_private_popularity_spends_its_budget_and_loses_accuracy_as_the_budget_shrinks():
    cfg = compose("simulate", ALL_ML100K_SHAPED)
    exact = popularity_point(cfg, "none", math.inf, 0)["ndcg@10"]
    scores = {}
    for mode in ("record", "user"):
        for eps in (0.5, 8.0):
            point = popularity_point(cfg, mode, eps, 0)
            assert 0.97 * eps <= point["epsilon_spent"] <= eps
            scores[mode, eps] = point["ndcg@10"]
    # 943 users: at ε = 8 the devices' noise (σ ≈ 0.64 each) barely moves the ranking; at
    # ε = 0.5 (σ ≈ 7.7 each, √943 · 7.7 ≈ 240 on every count) it does. The server's single draw
    # (user level) keeps the ranking close to exact even at 0.5.
    assert scores["record", 8.0] > 0.95 * exact
    assert scores["record", 0.5] < 0.6 * exact
    assert scores["user", 0.5] > 0.8 * exact
    assert popularity_point(cfg, "record", 0.5, 0) == popularity_point(cfg, "record", 0.5, 0)
    with pytest.raises(ValueError, match="only mode none has no budget"):
        popularity_point(cfg, "record", math.inf, 0)
