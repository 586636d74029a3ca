"""The centralized fedrec MF against the libraries users would otherwise pick, side by side.

Same run, same split, same metric code for everyone:
- ML-100K explicit, per-user random 80/20: RMSE/MAE of fedrec MF vs Surprise's SVD (defaults).
- ML-100K implicit, leave-one-out with 99 fixed negatives: full-ranking NDCG@10 and Recall@20,
  sampled HR@10 of fedrec MF vs implicit's BPR and ALS (tuned by tune_peers.py).
fedrec runs with the shipped configs (``+experiment=ml100k_explicit`` / ``ml100k_implicit``).
Needs ``pip install -e .[bench]`` and the MovieLens files (``$FEDREC_DATA_DIR`` or ../shared/data).

    python benchmarks/centralized_vs_peers.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402
from peers import (  # noqa: E402
    IMPLICIT_TUNED,
    SURPRISE_SVD_DEFAULTS,
    implicit_scores,
    surprise_svd_predict,
)

from fedrec.config import compose  # noqa: E402
from fedrec.data import load_split  # noqa: E402
from fedrec.eval import evaluate_scores  # noqa: E402
from fedrec.jobs.train import score_function  # noqa: E402
from fedrec.model import fit_centralized  # noqa: E402

IMPLICIT_METRICS = ["ndcg@10", "recall@20", "sampled_hr@10"]
EXPLICIT_METRICS = ["rmse", "mae"]


def fedrec_mf(experiment: str, seed: int):
    cfg = compose(
        "train", [f"+experiment={experiment}", f"seed={seed}", f"dataset.split.seed={seed}"]
    )
    split = load_split(cfg.dataset)
    started = time.perf_counter()
    model = fit_centralized(
        split.train, cfg.model, cfg.training, explicit=cfg.dataset.mode == "explicit", seed=seed
    )
    metrics = evaluate_scores(score_function(model), split, cfg.eval)
    return split, cfg.eval, metrics, time.perf_counter() - started


def explicit_rows(seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"fedrec MF": [], "Surprise SVD": []}
    for seed in seeds:
        split, eval_spec, ours, seconds = fedrec_mf("ml100k_explicit", seed)
        results["fedrec MF"].append({**ours, "time_s": seconds})
        started = time.perf_counter()
        predictions = surprise_svd_predict(
            split.train.users,
            split.train.items,
            split.train.ratings,
            split.test.users,
            split.test.items,
            seed=seed,
        )
        seconds = time.perf_counter() - started
        table = np.zeros((split.train.num_users, split.train.num_items), dtype=np.float64)
        table[split.test.users, split.test.items] = predictions
        theirs = evaluate_scores(lambda users, t=table: t[users], split, eval_spec)
        results["Surprise SVD"].append({**theirs, "time_s": seconds})
    return results


def implicit_rows(seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {
        "fedrec MF": [],
        "implicit BPR": [],
        "implicit ALS": [],
    }
    for seed in seeds:
        split, eval_spec, ours, seconds = fedrec_mf("ml100k_implicit", seed)
        results["fedrec MF"].append({**ours, "time_s": seconds})
        for algorithm in ("bpr", "als"):
            started = time.perf_counter()
            scores = implicit_scores(
                algorithm,
                split.train.users,
                split.train.items,
                split.train.num_users,
                split.train.num_items,
                seed=seed,
                **IMPLICIT_TUNED[algorithm],
            )
            seconds = time.perf_counter() - started
            theirs = evaluate_scores(lambda users, s=scores: s[users], split, eval_spec)
            results[f"implicit {algorithm.upper()}"].append({**theirs, "time_s": seconds})
    return results


def summarize(
    results, metrics: list[str], baseline: str, lower_is_better: bool
) -> tuple[str, bool]:
    header = ["method", *metrics, "fit time (s)", *[f"{m} ratio vs {baseline}" for m in metrics]]
    rows, ours_wins = [], True
    means = {
        name: {m: statistics.mean(r[m] for r in runs) for m in [*metrics, "time_s"]}
        for name, runs in results.items()
    }
    for name, runs in results.items():
        cells = [name]
        for metric in metrics:
            values = [r[metric] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        cells.append(f"{means[name]['time_s']:.1f}")
        cells += [f"{means[name][m] / means[baseline][m]:.3f}" for m in metrics]
        rows.append(cells)
        if name != "fedrec MF":
            for metric in metrics:
                ours, theirs = means["fedrec MF"][metric], means[name][metric]
                ours_wins &= ours <= theirs if lower_is_better else ours >= theirs
    return markdown_table(header, rows), ours_wins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-record", action="store_true", help="print only, do not append")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    explicit_table, explicit_ok = summarize(
        explicit_rows(args.seeds), EXPLICIT_METRICS, "Surprise SVD", lower_is_better=True
    )
    implicit_table, implicit_ok = summarize(
        implicit_rows(args.seeds), IMPLICIT_METRICS, "implicit ALS", lower_is_better=False
    )
    body = (
        f"Seeds {args.seeds} (split seed = model seed); mean ± std over seeds; "
        f"total wall time {time.perf_counter() - started:.0f} s.\n\n"
        f"**ML-100K explicit, per-user random 80/20** (Surprise SVD {SURPRISE_SVD_DEFAULTS}):\n\n"
        f"{explicit_table}\n\nfedrec MF RMSE and MAE ≤ Surprise SVD: **{explicit_ok}**\n\n"
        "**ML-100K implicit, leave-one-out, 99 fixed negatives** "
        f"(implicit params {IMPLICIT_TUNED}):\n\n{implicit_table}\n\n"
        f"fedrec MF ≥ BPR and ALS on every metric: **{implicit_ok}**\n"
    )
    print(body)
    if not args.no_record:
        append_results("Centralized reference vs Surprise and implicit (ML-100K)", body)


if __name__ == "__main__":
    main()
