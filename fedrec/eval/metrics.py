"""Ranking and rating metrics for ONE user, so a device can compute its own and a server average.

Conventions (they change numbers, so they are fixed here and tested by hand):
- Ranks are 0-based positions in the candidate list sorted by score, highest first.
- Ties are broken against the relevant items: a non-relevant candidate with the same score is
  ranked ahead. A model that scores everything equally therefore earns nothing, instead of
  earning a perfect score from a lucky sort order.
- Full ranking: the candidates are all items the user did not interact with in training (test
  items included). Sampled: the user's test items plus the split's fixed negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from fedrec.registry import Registry

RankingMetric = Callable[[np.ndarray, int, int], float]
RANKING_METRICS: Registry[RankingMetric] = Registry("ranking metric")


def relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based ranks of the relevant candidates (sorted), ties broken against them."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be equal 1-D")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a model that produced them cannot be ranked")
    order = np.lexsort((relevant, -scores))  # by score desc, then non-relevant first
    return np.sort(np.flatnonzero(relevant[order]))


@RANKING_METRICS.register("hr")
def hit_rate(ranks: np.ndarray, num_relevant: int, k: int) -> float:
    """1 if any relevant item is in the top k."""
    return float(len(ranks) > 0 and ranks[0] < k)


@RANKING_METRICS.register("recall")
def recall(ranks: np.ndarray, num_relevant: int, k: int) -> float:
    """Share of the user's relevant items found in the top k."""
    return float(np.count_nonzero(ranks < k) / num_relevant) if num_relevant else 0.0


@RANKING_METRICS.register("precision")
def precision(ranks: np.ndarray, num_relevant: int, k: int) -> float:
    return float(np.count_nonzero(ranks < k) / k)


@RANKING_METRICS.register("ndcg")
def ndcg(ranks: np.ndarray, num_relevant: int, k: int) -> float:
    """Binary-relevance NDCG: DCG of the hits over the DCG of a perfect top-min(k, relevant)."""
    if not num_relevant:
        return 0.0
    hits = ranks[ranks < k]
    dcg = float(np.sum(1.0 / np.log2(hits + 2.0)))
    ideal = float(np.sum(1.0 / np.log2(np.arange(min(k, num_relevant)) + 2.0)))
    return dcg / ideal


@RANKING_METRICS.register("mrr")
def reciprocal_rank(ranks: np.ndarray, num_relevant: int, k: int) -> float:
    """1 / (rank + 1) of the first relevant item if it is in the top k."""
    return float(1.0 / (ranks[0] + 1)) if len(ranks) and ranks[0] < k else 0.0


def parse_metric_name(name: str) -> tuple[str, int]:
    """``"ndcg@10"`` → ``("ndcg", 10)``, with an error naming the accepted metrics."""
    base, sep, cutoff = name.partition("@")
    RANKING_METRICS.get(base)
    if not sep or not cutoff.isdigit() or int(cutoff) < 1:
        raise ValueError(f"metric '{name}': expected NAME@K with K >= 1, e.g. ndcg@10")
    return base, int(cutoff)


def ranking_metrics_for_user(
    scores: np.ndarray,
    *,
    train_items: np.ndarray,
    test_items: np.ndarray,
    negatives: np.ndarray | None,
    full_metrics: Iterable[str],
    sampled_metrics: Iterable[str] = (),
) -> dict[str, float]:
    """Full-ranking metrics (named as given) and sampled ones (prefixed ``sampled_``).

    ``scores`` holds one score per item of the catalogue. ``negatives`` may be None when no
    sampled metric is asked for.
    """
    test_items = np.unique(test_items)
    results: dict[str, float] = {}
    full_metrics, sampled_metrics = list(full_metrics), list(sampled_metrics)
    if full_metrics:
        candidate = np.ones(len(scores), dtype=bool)
        candidate[train_items] = False
        candidates = np.flatnonzero(candidate)
        relevant = np.zeros(len(scores), dtype=bool)
        relevant[test_items] = True
        ranks = relevant_ranks(scores[candidates], relevant[candidates])
        for name in full_metrics:
            base, k = parse_metric_name(name)
            results[name] = RANKING_METRICS.get(base)(ranks, len(test_items), k)
    if sampled_metrics:
        if negatives is None:
            raise ValueError("sampled metrics need the split's negatives for this user")
        candidates = np.concatenate([test_items, negatives])
        relevant = np.zeros(len(candidates), dtype=bool)
        relevant[: len(test_items)] = True
        ranks = relevant_ranks(scores[candidates], relevant)
        for name in sampled_metrics:
            base, k = parse_metric_name(name)
            results[f"sampled_{name}"] = RANKING_METRICS.get(base)(ranks, len(test_items), k)
    return results


RATING_PARTS = ("squared_error_sum", "absolute_error_sum", "num_ratings")


def rating_errors_for_user(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """The parts of RMSE/MAE for one user; :func:`average_over_users` combines them.

    RMSE is defined over all test ratings (as Surprise and the literature report it), so a user
    contributes error sums and a count rather than their own RMSE.
    """
    errors = np.asarray(predictions, dtype=np.float64) - np.asarray(ratings, dtype=np.float64)
    return {
        "squared_error_sum": float(np.sum(errors**2)),
        "absolute_error_sum": float(np.sum(np.abs(errors))),
        "num_ratings": float(len(errors)),
    }


def average_over_users(per_user: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of each ranking metric over users; RMSE/MAE over all ratings; ``num_users`` scored."""
    rows = list(per_user)
    if not rows:
        raise ValueError("no user metrics to average")
    totals: dict[str, float] = {}
    for row in rows:
        for name, value in row.items():
            totals[name] = totals.get(name, 0.0) + float(value)
    averaged = {n: v / len(rows) for n, v in totals.items() if n not in RATING_PARTS}
    if totals.get("num_ratings"):
        averaged["rmse"] = float(np.sqrt(totals["squared_error_sum"] / totals["num_ratings"]))
        averaged["mae"] = totals["absolute_error_sum"] / totals["num_ratings"]
    averaged["num_users"] = float(len(rows))
    return averaged
