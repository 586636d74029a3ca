"""Cold start on the device: users who took part in no round, against the popularity ranking.

Usage: ``python benchmarks/cold_start.py [--dataset ml100k] [--held-out 0.2] [--seeds 0 1 2]``

A seeded share of the users is held out of the federation entirely; federated ALS (the shipped
settings) trains on the others. Each held-out user then does what ``FedrecClient.recommend``
does before any round: solves their factor in closed form from their own training items against
the final table (:func:`fedrec.client.recommend.solve_own_factor`) and ranks the full catalogue.
The reference is the most-popular ranking counted on the training users' logs (what the server
could publish). Both are scored with the same per-user full-ranking metrics on the held-out
users' test items.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from fedrec.client.recommend import scores, solve_own_factor  # noqa: E402
from fedrec.config import compose  # noqa: E402
from fedrec.data import load_split  # noqa: E402
from fedrec.eval.metrics import ranking_metrics_for_user  # noqa: E402
from fedrec.jobs.tune import run_als_in_process  # noqa: E402

METRICS = ["ndcg@10", "recall@20"]


def one_seed(dataset: str, held_out_share: float, seed: int) -> tuple[dict, dict]:
    cfg = compose("simulate", [f"dataset={dataset}", "algorithm=als"])
    split = load_split(cfg.dataset)
    users = np.random.default_rng(seed).permutation(split.train.num_users)
    cut = int(len(users) * held_out_share)
    held_out, trained = np.sort(users[:cut]), np.sort(users[cut:])
    _, table = run_als_in_process(
        split, cfg.algorithm, embedding_dim=64, rounds=8, seed=seed, users=trained
    )
    in_training = np.isin(split.train.users, trained)
    counts = np.bincount(split.train.items[in_training], minlength=split.train.num_items)
    cold, popular = [], []
    for user in held_out:
        train = split.train.items[split.train.users == user]
        test = split.test.items[split.test.users == user]
        if len(test) == 0:
            continue
        factor = solve_own_factor(table, train, cfg.algorithm.als_spec())
        for ranking, out in ((scores(table, factor), cold), (counts.astype(float), popular)):
            out.append(
                ranking_metrics_for_user(
                    ranking,
                    train_items=train,
                    test_items=test,
                    negatives=None,
                    full_metrics=METRICS,
                    sampled_metrics=[],
                )
            )
    mean = lambda rows: {m: statistics.mean(r[m] for r in rows) for m in METRICS}  # noqa: E731
    return mean(cold), mean(popular)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"machine: {machine()}; {args.dataset}, {args.held_out:.0%} of users held out")
    ratios = []
    for seed in args.seeds:
        cold, popular = one_seed(args.dataset, args.held_out, seed)
        ratios.append(cold["ndcg@10"] / popular["ndcg@10"])
        print(
            f"seed {seed}: cold start ndcg@10 {cold['ndcg@10']:.4f} recall@20 "
            f"{cold['recall@20']:.4f} | popularity ndcg@10 {popular['ndcg@10']:.4f} recall@20 "
            f"{popular['recall@20']:.4f} | ratio {ratios[-1]:.2f}"
        )
    print(
        f"cold start / popularity (ndcg@10): mean {statistics.mean(ratios):.2f}, "
        f"min {min(ratios):.2f}; wall {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
