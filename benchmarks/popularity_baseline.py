"""The most-popular ranking on ML-100K: the floor any private model should clear.

Scores every item by its number of training interactions, the same for every user, and
evaluates it with the same code and split as the centralized reference (test split) and on
the validation split the federated recipes were tuned on (each user's latest training item).
A model that needs no user data at all reaches these figures, so a DP model at or below them
has learned popularity and no personalization.

    python benchmarks/popularity_baseline.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.data import load_split, make_split  # noqa: E402
from fedrec.eval import evaluate_scores  # noqa: E402

METRICS = ["ndcg@10", "recall@20", "sampled_hr@10"]


def popularity_metrics(split, eval_spec) -> dict[str, float]:
    counts = np.bincount(split.train.items, minlength=split.train.num_items).astype(np.float64)
    return evaluate_scores(lambda users: np.tile(counts, (len(users), 1)), split, eval_spec)


def main() -> None:
    cfg = compose("train", ["+experiment=ml100k_implicit"])
    test_split = load_split(cfg.dataset)
    validation = make_split(test_split.train, "leave_one_out", seed=0)
    rows = []
    for name, split in (("test", test_split), ("validation", validation)):
        metrics = popularity_metrics(split, cfg.eval)
        rows.append([f"most popular, {name} split", *[f"{metrics[m]:.4f}" for m in METRICS]])
    body = (
        "ML-100K implicit, leave-one-out (split seed 0): every item scored by its number of "
        "training interactions, evaluated by `fedrec.eval.evaluate_scores` like the "
        "centralized reference.\n\n" + markdown_table(["ranking", *METRICS], rows) + "\n"
    )
    print(body)
    append_results("Most-popular baseline (ML-100K)", body)


if __name__ == "__main__":
    main()
