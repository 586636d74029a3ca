"""Every metric against values worked out by hand, ties included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.eval import (
    average_over_users,
    ranking_metrics_for_user,
    rating_errors_for_user,
    relevant_ranks,
)
from fedrec.eval.metrics import hit_rate, ndcg, recall


def test_ranks_break_ties_against_relevant_items():
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    # Candidate 2 is relevant and tied with non-relevant candidate 1: it ranks after it.
    assert list(relevant_ranks(scores, np.array([False, False, True, False]))) == [2]
    assert list(relevant_ranks(scores, np.array([False, True, False, False]))) == [2]
    # All scores equal: the relevant items come last.
    assert list(relevant_ranks(np.zeros(5), np.array([1, 0, 0, 1, 0], dtype=bool))) == [3, 4]
    with pytest.raises(ValueError, match="NaN"):
        relevant_ranks(np.array([np.nan, 1.0]), np.array([True, False]))


def test_single_relevant_item_by_hand():
    ranks = np.array([2])  # third place
    assert hit_rate(ranks, 1, 3) == 1.0 and hit_rate(ranks, 1, 2) == 0.0
    assert ndcg(ranks, 1, 3) == pytest.approx(1 / math.log2(4))  # 0.5
    assert ndcg(ranks, 1, 2) == 0.0
    assert recall(ranks, 1, 3) == 1.0


def test_several_relevant_items_by_hand():
    ranks = np.array([0, 3, 7])  # three relevant items at positions 1, 4 and 8
    k = 5
    dcg = 1 / math.log2(2) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg(ranks, 3, k) == pytest.approx(dcg / idcg)
    assert recall(ranks, 3, k) == pytest.approx(2 / 3)
    assert hit_rate(ranks, 3, k) == 1.0
    # With k=1 the ideal DCG has one term only, and the hit at rank 0 makes NDCG perfect.
    assert ndcg(ranks, 3, 1) == 1.0


def test_full_ranking_excludes_training_items():
    # 6 items. Item 0 has the top score but is a training item, so it is not a candidate.
    scores = np.array([9.0, 1.0, 5.0, 3.0, 5.0, 0.0])
    result = ranking_metrics_for_user(
        scores,
        train_items=np.array([0]),
        test_items=np.array([4]),
        negatives=None,
        full_metrics=["hr@1", "ndcg@2", "recall@2"],
    )
    # Candidates 1..5 sorted: item 2 (5.0, tie broken against item 4), item 4, item 3, 1, 5.
    assert result == {"hr@1": 0.0, "ndcg@2": pytest.approx(1 / math.log2(3)), "recall@2": 1.0}


def test_sampled_metrics_rank_only_test_items_and_negatives():
    scores = np.array([0.0, 0.2, 0.9, 0.8, 0.3, 0.95])
    result = ranking_metrics_for_user(
        scores,
        train_items=np.array([5]),
        test_items=np.array([3]),
        negatives=np.array([0, 1, 2]),
        full_metrics=[],
        sampled_metrics=["hr@1", "ndcg@2"],
    )
    # Among {3: 0.8, 0: 0.0, 1: 0.2, 2: 0.9} the test item is second; item 5 is not a candidate.
    assert result == {"sampled_hr@1": 0.0, "sampled_ndcg@2": pytest.approx(1 / math.log2(3))}


def test_rating_errors_combine_over_all_ratings_not_per_user():
    first = rating_errors_for_user(np.array([3.0, 4.0]), np.array([4.0, 4.0]))  # errors 1, 0
    second = rating_errors_for_user(np.array([1.0]), np.array([4.0]))  # error 3
    averaged = average_over_users([first, second])
    assert averaged["rmse"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert averaged["mae"] == pytest.approx((1 + 0 + 3) / 3)
    assert averaged["num_users"] == 2


def test_ranking_metrics_are_averaged_over_users():
    averaged = average_over_users([{"ndcg@10": 1.0}, {"ndcg@10": 0.0}, {"ndcg@10": 0.5}])
    assert averaged == {"ndcg@10": 0.5, "num_users": 3.0}
    with pytest.raises(ValueError, match="no user metrics"):
        average_over_users([])


@pytest.mark.parametrize("name", ["ndcg", "ndcg@0", "ndcg@x", "auc@10"])
def test_bad_metric_names(name):
    with pytest.raises(ValueError):
        ranking_metrics_for_user(
            np.zeros(3),
            train_items=np.array([], dtype=int),
            test_items=np.array([1]),
            negatives=None,
            full_metrics=[name],
        )
