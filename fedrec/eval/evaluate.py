"""Score a split user by user with the per-user metric functions, then average over users."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrec.data.splits import Split
from fedrec.data.user_logs import user_row_groups
from fedrec.eval.metrics import (
    average_over_users,
    parse_metric_name,
    ranking_metrics_for_user,
    rating_errors_for_user,
)

# users [n] → scores [n, num_items]; items [m] per user → predicted ratings.
ScoreFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class EvalSpec:
    """Mirrors ``configs/eval/*.yaml``. Empty lists switch a family of metrics off."""

    full_metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@20", "hr@10"])
    sampled_metrics: list[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])
    rating_metrics: bool = False  # RMSE/MAE, for explicit mode
    batch_users: int = 512

    def __post_init__(self) -> None:
        for name in [*self.full_metrics, *self.sampled_metrics]:
            parse_metric_name(name)


def per_user_items(log, num_users: int) -> list[np.ndarray]:
    groups = user_row_groups(log) if len(log) else []
    out = [np.empty(0, dtype=np.int64)] * num_users
    for user, rows in enumerate(groups):
        out[user] = log.items[rows]
    return out


def evaluate_scores(score_users: ScoreFn, split: Split, spec: EvalSpec) -> dict[str, float]:
    """Metrics averaged over every user with a test interaction.

    ``score_users`` returns full score rows; in explicit mode those rows are predicted ratings,
    so RMSE reads the test items' entries from them.
    """
    num_users = split.train.num_users
    train_items = per_user_items(split.train, num_users)
    test_rows = user_row_groups(split.test)
    test_users = split.test_users
    per_user: list[dict[str, float]] = []
    for start in range(0, len(test_users), spec.batch_users):
        batch = test_users[start : start + spec.batch_users]
        scores = np.asarray(score_users(batch), dtype=np.float64)
        for row, user in enumerate(batch):
            rows = test_rows[user]
            test_items = split.test.items[rows]
            metrics: dict[str, float] = {}
            if spec.full_metrics or spec.sampled_metrics:
                metrics = ranking_metrics_for_user(
                    scores[row],
                    train_items=train_items[user],
                    test_items=test_items,
                    negatives=split.negatives_of(user) if spec.sampled_metrics else None,
                    full_metrics=spec.full_metrics,
                    sampled_metrics=spec.sampled_metrics,
                )
            if spec.rating_metrics:
                if split.test.ratings is None:
                    raise ValueError("rating metrics need ratings in the test log")
                metrics |= rating_errors_for_user(scores[row, test_items], split.test.ratings[rows])
            per_user.append(metrics)
    return average_over_users(per_user)
