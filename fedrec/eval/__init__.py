"""Metrics computed per user (so a device can compute its own) and averaged over users."""

from fedrec.eval.evaluate import EvalSpec, evaluate_scores
from fedrec.eval.metrics import (
    RANKING_METRICS,
    average_over_users,
    ranking_metrics_for_user,
    rating_errors_for_user,
    relevant_ranks,
)

__all__ = [
    "RANKING_METRICS",
    "EvalSpec",
    "average_over_users",
    "evaluate_scores",
    "ranking_metrics_for_user",
    "rating_errors_for_user",
    "relevant_ranks",
]
