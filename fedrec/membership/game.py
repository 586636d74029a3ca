"""The membership game the DP bound speaks to: one interaction in the user's log, or not.

For each audited user one training item i is drawn; the user's round is run twice from the same
state: once on the real log (the update the server really got) and once on the log without i
(a counterfactual, with fresh randomness). An attack scores item i in both updates; the ROC AUC
of "in" scores against "out" scores, pooled over users and rounds, is what the (ε, δ) bound
of :mod:`fedrec.membership.bounds` must contain (pooling is a mixture of per-user games, which obeys
the same bound). The audit's main AUC (a user's items against their other items) is the more
practical number but compares different items, so it is not exactly this game.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from fedrec.training.state import LocalData


def drop_one_item(
    datas: dict[int, LocalData], rng: np.random.Generator
) -> tuple[dict[int, LocalData], dict[int, int]]:
    """Each user's log without one uniformly drawn training item (every occurrence of it), and
    the item dropped. Users with a single distinct item are left out (an empty log cannot
    train)."""
    out, targets = {}, {}
    for key, data in datas.items():
        distinct = np.unique(data.train_items)
        if len(distinct) < 2:
            continue
        item = int(rng.choice(distinct))
        keep = data.train_items != item
        out[key] = replace(
            data,
            train_items=data.train_items[keep],
            train_ratings=None if data.train_ratings is None else data.train_ratings[keep],
        )
        targets[key] = item
    return out, targets


@dataclass
class GameScores:
    """Scores of the target item with it in the log (``inside``) and without (``outside``)."""

    inside: list[float] = field(default_factory=list)
    outside: list[float] = field(default_factory=list)

    def add(self, inside: float, outside: float) -> None:
        self.inside.append(float(inside))
        self.outside.append(float(outside))

    def auc(self) -> float:
        from fedrec.membership.attacks import roc_auc

        scores = np.array(self.inside + self.outside)
        members = np.array([True] * len(self.inside) + [False] * len(self.outside))
        return roc_auc(scores, members)

    def standard_error(self) -> float:
        """Hanley & McNeil (1982) standard error of the AUC, for reading it against the bound."""
        area, positives, negatives = self.auc(), len(self.inside), len(self.outside)
        if math.isnan(area) or not positives or not negatives:
            return float("nan")
        q1, q2 = area / (2 - area), 2 * area**2 / (1 + area)
        variance = (
            area * (1 - area) + (positives - 1) * (q1 - area**2) + (negatives - 1) * (q2 - area**2)
        ) / (positives * negatives)
        return math.sqrt(max(variance, 0.0))
