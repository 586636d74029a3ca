"""One-off tuning of implicit's BPR and ALS on MovieLens-100K, so IMPLICIT_TUNED is reproducible.

Protocol (kept deliberately honest so the peers are not handicapped or flattered):

* Implicit feedback: every rating is a positive. Raw 1-based ids are shifted to 0-based.
* Leave-one-out: each user's latest interaction (ties -> larger item id) is the test item.
* Validation: each user's latest *remaining* interaction is the validation item; the grid is
  fitted on the rest and ranked by validation full-ranking NDCG@10. The test item is never
  looked at while choosing (it stays an ordinary unseen candidate during validation).
* The chosen setting is refitted on all training interactions (validation item included)
  and scored on the test item.

Metrics: full-ranking NDCG@10 over every item the user has not interacted with in training
(rank = number of candidates scoring strictly higher than the target; NDCG = 1/log2(rank+2)
if rank < 10 else 0), Recall@20 (= hit@20 for one target) and HR@10 against 99 sampled
negatives (items the user never interacted with at all, numpy default_rng(0)).

Also prints Surprise SVD's RMSE on an 80/20 random split (seed 0) for reference.

Usage: python benchmarks/tune_peers.py [--data PATH] [--out results.json]
Total runtime on 2 CPU cores: a few minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import SURPRISE_SVD_DEFAULTS, implicit_scores, surprise_svd_predict  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/ml-100k/u.data")
NUM_NEGATIVES = 99

BPR_GRID: dict[str, list[Any]] = {
    "factors": [32, 64, 128],
    "learning_rate": [0.01, 0.05, 0.1],
    "regularization": [0.001, 0.01, 0.1],
    "iterations": [50, 100, 200],
}
ALS_GRID: dict[str, list[Any]] = {
    "factors": [32, 64, 128],
    "regularization": [0.01, 0.1, 1.0, 10.0],
    "alpha": [1.0, 5.0, 10.0, 20.0, 40.0],
    "iterations": [15, 30],
}


def load_ml100k(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Read u.data into 0-based (users, items, ratings, timestamps) plus the id-space sizes."""
    raw = np.loadtxt(path, dtype=np.int64, delimiter="\t")
    users, items = raw[:, 0] - 1, raw[:, 1] - 1
    return users, items, raw[:, 2].astype(np.float64), raw[:, 3], 943, 1682


def last_per_user(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Row index of each user's latest interaction (ties -> larger item id), indexed by user."""
    order = np.lexsort((items, times, users))  # by user, then time, then item
    sorted_users = users[order]
    is_last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    rows = order[is_last]
    out = np.full(users.max() + 1, -1, dtype=np.int64)
    out[users[rows]] = rows
    return out


class Evaluator:
    """Scores one held-out item per user against full ranking and sampled negatives."""

    def __init__(
        self,
        train_users: np.ndarray,
        train_items: np.ndarray,
        targets: np.ndarray,
        negatives: np.ndarray,
        num_users: int,
        num_items: int,
    ) -> None:
        self.seen = np.zeros((num_users, num_items), dtype=bool)
        self.seen[train_users, train_items] = True
        if self.seen[np.arange(num_users), targets].any():
            raise ValueError("a target item also appears in its user's training data")
        self.targets = targets
        self.negatives = negatives

    def __call__(self, scores: np.ndarray) -> dict[str, float]:
        rows = np.arange(len(self.targets))
        target = scores[rows, self.targets]
        masked = np.where(self.seen, -np.inf, scores)
        rank = (masked > target[:, None]).sum(axis=1)
        ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)
        neg_rank = (scores[rows[:, None], self.negatives] > target[:, None]).sum(axis=1)
        return {
            "ndcg@10": float(ndcg.mean()),
            "recall@20": float((rank < 20).mean()),
            "hr@10_sampled": float((neg_rank < 10).mean()),
        }


def sample_negatives(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int, seed: int = 0
) -> np.ndarray:
    """NUM_NEGATIVES items per user drawn without replacement from items never interacted."""
    rng = np.random.default_rng(seed)
    seen = np.zeros((num_users, num_items), dtype=bool)
    seen[users, items] = True
    unseen = [np.flatnonzero(~seen[u]) for u in range(num_users)]
    return np.stack([rng.choice(pool, NUM_NEGATIVES, replace=False) for pool in unseen])


def grid(spec: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a parameter grid as a list of dicts."""
    return [dict(zip(spec, values, strict=True)) for values in itertools.product(*spec.values())]


def tune(
    algorithm: str,
    spec: dict[str, list[Any]],
    fit_users: np.ndarray,
    fit_items: np.ndarray,
    evaluate: Evaluator,
    num_users: int,
    num_items: int,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """Fit every grid point on the validation-training data; return the best by val NDCG@10."""
    log = []
    for params in grid(spec):
        start = time.perf_counter()
        scores = implicit_scores(
            algorithm, fit_users, fit_items, num_users, num_items, seed=0, **params
        )
        metrics = evaluate(scores)
        seconds = time.perf_counter() - start
        log.append({"params": params, "val": metrics, "seconds": round(seconds, 2)})
        print(f"  {algorithm} {params} -> {fmt(metrics)} ({seconds:.1f}s)", flush=True)
    best = max(log, key=lambda row: row["val"]["ndcg@10"])
    return best["params"], best["val"], log


def fmt(metrics: dict[str, float]) -> str:
    """Compact one-line rendering of a metrics dict."""
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def main() -> None:
    """Run the split, the two grids, the test evaluation and the Surprise reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="optional JSON results file")
    args = parser.parse_args()
    wall = time.perf_counter()

    users, items, ratings, times, num_users, num_items = load_ml100k(args.data)
    test_rows = last_per_user(users, items, times)
    is_train = np.ones(len(users), dtype=bool)
    is_train[test_rows] = False
    tr_users, tr_items, tr_times = users[is_train], items[is_train], times[is_train]
    val_rows = last_per_user(tr_users, tr_items, tr_times)
    is_fit = np.ones(len(tr_users), dtype=bool)
    is_fit[val_rows] = False

    negatives = sample_negatives(users, items, num_users, num_items, seed=0)
    val_eval = Evaluator(
        tr_users[is_fit], tr_items[is_fit], tr_items[val_rows], negatives, num_users, num_items
    )
    test_eval = Evaluator(tr_users, tr_items, items[test_rows], negatives, num_users, num_items)

    results: dict[str, Any] = {}
    pop = np.bincount(tr_items, minlength=num_items).astype(np.float32)
    results["popularity_test"] = test_eval(np.broadcast_to(pop, (num_users, num_items)))
    print(f"popularity baseline test: {fmt(results['popularity_test'])}")

    for algorithm, spec in (("bpr", BPR_GRID), ("als", ALS_GRID)):
        start = time.perf_counter()
        params, val, log = tune(
            algorithm, spec, tr_users[is_fit], tr_items[is_fit], val_eval, num_users, num_items
        )
        tuning_s = time.perf_counter() - start
        # Refit on all training interactions (validation item included), then test.
        per_seed = []
        for seed in (0, 1, 2):
            scores = implicit_scores(
                algorithm, tr_users, tr_items, num_users, num_items, seed=seed, **params
            )
            per_seed.append(test_eval(scores))
        mean = {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}
        spread = {k: float(np.std([m[k] for m in per_seed])) for k in per_seed[0]}
        results[algorithm] = {
            "params": params,
            "val": val,
            "test_seed0": per_seed[0],
            "test_mean_seeds012": mean,
            "test_std_seeds012": spread,
            "tuning_seconds": round(tuning_s, 1),
            "grid": log,
        }
        print(f"{algorithm} chosen {params}\n  val  {fmt(val)}\n  test {fmt(per_seed[0])} (seed 0)")
        print(f"  test std over seeds 0-2: {fmt(spread)}; tuning {tuning_s:.0f}s")

    # Surprise SVD reference: explicit ratings, 80/20 random split with seed 0.
    perm = np.random.default_rng(0).permutation(len(users))
    cut = int(0.8 * len(users))
    tr, te = perm[:cut], perm[cut:]
    start = time.perf_counter()
    pred = surprise_svd_predict(
        users[tr], items[tr], ratings[tr], users[te], items[te], seed=0, **SURPRISE_SVD_DEFAULTS
    )
    rmse = float(np.sqrt(np.mean((pred - ratings[te]) ** 2)))
    mae = float(np.mean(np.abs(pred - ratings[te])))
    results["surprise_svd"] = {
        "params": SURPRISE_SVD_DEFAULTS,
        "rmse": rmse,
        "mae": mae,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"surprise SVD 80/20 seed 0: RMSE={rmse:.4f} MAE={mae:.4f}")
    results["wall_seconds"] = round(time.perf_counter() - wall, 1)
    print(f"total wall {results['wall_seconds']}s")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
