"""fedrec's federated ALS, with its shipped settings, on a public log nobody here tuned for.

Why: configs/algorithm/als.yaml's ``reg``, ``unobserved_weight`` and ``reg_exponent`` were chosen
on the validation splits of ML-100K and of a synthetic MovieLens-shaped federation, and every
other benchmark here runs on MovieLens-shaped data. Settings chosen on one
dataset can win there and tie the popularity ranking elsewhere, so this script measures the
shipped settings, unchanged, on a log with another shape: the HetRec 2011 Last.fm-2k
``user_artists.dat`` (about 1.9K users, 17.6K artists, 93K user-artist play counts; every row
with any play count is a positive). The peer, ``implicit``'s ALS, gets the advantage of being
tuned on this log: a grid over factors, regularization and alpha, chosen by NDCG@10 on a
validation split carved from the training data only (the test items choose nothing), refit on
the whole training log and scored once on the test split. The most-popular ranking is the floor.

Everything is scored by the same code: fedrec's federated evaluation for fedrec's ALS (each
device ranks the full catalogue without its training items), :func:`fedrec.eval.evaluate_scores`
(the same per-user metric functions) for implicit's U·Vᵀ and for the popularity ranking. A seed
sets the split (random 80/20 per user), the validation carve, and both models' initialisation.

The log is licensed for non-commercial research and is never copied into this repository:
download it from https://grouplens.org/datasets/hetrec-2011/ and point ``--path`` (or
``$FEDREC_LASTFM_PATH``) at ``user_artists.dat``. Needs ``pip install -e .[bench]``.
Prints a markdown table and, as its last line, one JSON object; it records nothing.

    python benchmarks/untuned_log.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Single-threaded BLAS/OpenMP for both libraries (set before numpy loads), so the wall times
# compare like with like and the run stays light on a shared machine.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402
from peers import implicit_scores  # noqa: E402
from popularity_baseline import popularity_metrics  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.data import Split, load_split  # noqa: E402
from fedrec.eval import EvalSpec, evaluate_scores  # noqa: E402
from fedrec.jobs.tune import run_als_in_process, validation_split  # noqa: E402

DEFAULT_PATH = "/work/external_data/hetrec2011-lastfm-2k/user_artists.dat"
METRIC = "ndcg@10"
METRICS = (METRIC, "recall@20")
EMBEDDING_DIM = 64
IMPLICIT_ITERATIONS = 15
IMPLICIT_GRID: dict[str, list[Any]] = {
    "factors": [32, 64, 128],
    "regularization": [0.1, 1.0, 10.0, 30.0, 100.0],
    "alpha": [1.0, 10.0, 40.0],
}
IMPLICIT_QUICK_GRID: dict[str, list[Any]] = {
    "factors": [64],
    "regularization": [0.1, 1.0],
    "alpha": [10.0, 40.0],
}


def overrides(path: str, seed: int) -> list[str]:
    """The log as fedrec's generic loader reads it: play count >= 0 (any row) is a positive."""
    return [
        "dataset=generic",
        f"dataset.path={path}",
        "dataset.options.user_column=userID",
        "dataset.options.item_column=artistID",
        "dataset.options.rating_column=weight",
        "dataset.positive_threshold=0",
        "dataset.split.name=random_ratio",
        "dataset.split.test_ratio=0.2",
        f"dataset.split.seed={seed}",
        "algorithm=als",
        f"model.embedding_dim={EMBEDDING_DIM}",
    ]


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def implicit_metrics(split: Split, params: dict[str, Any], seed: int) -> dict[str, float]:
    """Fit implicit's CPU ALS on ``split.train`` and score U·Vᵀ with fedrec's evaluation."""
    scores = implicit_scores(
        "als",
        split.train.users,
        split.train.items,
        split.train.num_users,
        split.train.num_items,
        seed=seed,
        iterations=IMPLICIT_ITERATIONS,
        **params,
    )
    spec = EvalSpec(full_metrics=list(METRICS), sampled_metrics=[])
    return evaluate_scores(lambda users: scores[users], split, spec)


def tune_implicit(
    split: Split, grid: dict[str, list[Any]], seed: int
) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """The grid point with the best validation NDCG@10 (validation carved from training)."""
    validation = validation_split(split)
    rows = []
    for params in grid_points(grid):
        started = time.perf_counter()
        value = implicit_metrics(validation, params, seed)[METRIC]
        rows.append({**params, f"validation_{METRIC}": value})
        print(
            f"  seed {seed} implicit {params}: validation {METRIC} {value:.4f} "
            f"({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )
    best = max(rows, key=lambda row: row[f"validation_{METRIC}"])
    chosen = {name: best[name] for name in grid}
    return chosen, best[f"validation_{METRIC}"], rows


def run_seed(
    path: str, seed: int, rounds: int, grid: dict[str, list[Any]], extra: Sequence[str] = ()
) -> dict[str, Any]:
    cfg = compose("simulate", [*overrides(path, seed), *extra])
    split = load_split(cfg.dataset)
    out: dict[str, Any] = {"seed": seed, "split": split}

    started = time.perf_counter()
    popularity = popularity_metrics(split, EvalSpec(full_metrics=list(METRICS), sampled_metrics=[]))
    out["popularity"] = {**popularity, "wall_s": time.perf_counter() - started}

    started = time.perf_counter()
    ours, _ = run_als_in_process(
        split, cfg.algorithm, embedding_dim=EMBEDDING_DIM, rounds=rounds, seed=seed, metrics=METRICS
    )
    out["fedrec_als"] = {**ours, "wall_s": time.perf_counter() - started}
    out["fedrec_settings"] = {
        "reg": cfg.algorithm.reg,
        "unobserved_weight": cfg.algorithm.unobserved_weight,
        "reg_exponent": cfg.algorithm.reg_exponent,
        "embedding_dim": EMBEDDING_DIM,
        "rounds": rounds,
    }
    print(f"  seed {seed} fedrec ALS: {ours}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    params, validation_value, _ = tune_implicit(split, grid, seed)
    tuning_s = time.perf_counter() - started
    started = time.perf_counter()
    theirs = implicit_metrics(split, params, seed)
    out["implicit_als"] = {**theirs, "wall_s": time.perf_counter() - started}
    out["implicit_best"] = {
        **params,
        "iterations": IMPLICIT_ITERATIONS,
        f"validation_{METRIC}": round(validation_value, 4),
        "tuning_s": round(tuning_s, 1),
    }
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default=os.environ.get("FEDREC_LASTFM_PATH") or DEFAULT_PATH)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a smaller implicit grid")
    parser.add_argument(
        "--override",
        nargs="*",
        default=[],
        help="config overrides for fedrec's run, e.g. algorithm.reg_exponent=1 (default: none, "
        "the shipped settings)",
    )
    args = parser.parse_args()
    if not Path(args.path).is_file():
        parser.error(
            f"{args.path}: not found; download HetRec 2011 Last.fm-2k from "
            "https://grouplens.org/datasets/hetrec-2011/ and pass --path or $FEDREC_LASTFM_PATH"
        )
    grid = IMPLICIT_QUICK_GRID if args.quick else IMPLICIT_GRID
    started = time.perf_counter()
    runs = [run_seed(args.path, seed, args.rounds, grid, args.override) for seed in args.seeds]
    total_s = time.perf_counter() - started

    split: Split = runs[0]["split"]
    settings = runs[0]["fedrec_settings"]
    how = f"with {' '.join(args.override)}" if args.override else "shipped"
    names = {
        "popularity": "most popular (exact training counts)",
        "fedrec_als": (
            f"fedrec federated ALS, {how} "
            f"(reg {settings['reg']}, ν {settings['reg_exponent']}, "
            f"unobserved_weight {settings['unobserved_weight']}, dim {EMBEDDING_DIM}, "
            f"{args.rounds} rounds)"
        ),
        "implicit_als": "implicit ALS (CPU), tuned on this log's validation split",
    }
    means = {key: mean_std([r[key][METRIC] for r in runs])[0] for key in names}
    rows = []
    for key, label in names.items():
        cells = [label]
        for metric in METRICS:
            mean, std = mean_std([r[key][metric] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}")
        cells.append(f"{statistics.mean(r[key]['wall_s'] for r in runs):.1f}")
        cells.append(f"{means[key] / means['implicit_als']:.3f}")
        rows.append(cells)
    header = ["run", *METRICS, "wall s (fit + score)", f"{METRIC} ratio to implicit"]

    print(f"# fedrec ALS ({how}) vs implicit ALS (tuned) on HetRec 2011 Last.fm-2k\n")
    print(f"- machine: {machine()}")
    print(f"- log: {args.path} (sha256 {file_digest(args.path)[:16]}…)")
    print(
        f"- after loading: {split.train.num_users} users, {split.train.num_items} items, "
        f"{len(split.train) + len(split.test)} positives; random 80/20 per user "
        f"(seed {split.seed} for the first run)"
    )
    print(
        f"- seeds {args.seeds} (split seed = model seed); mean ± std over seeds; "
        f"total wall time {total_s:.0f} s"
    )
    grid_text = ", ".join(f"{k} {v}" for k, v in grid.items())
    print(f"- implicit grid ({len(grid_points(grid))} points): {grid_text}, iterations 15")
    for run in runs:
        print(f"- seed {run['seed']}: implicit chose {run['implicit_best']}")
    print()
    print(markdown_table(header, rows))
    print()
    summary = {
        "dataset": "hetrec2011-lastfm-2k/user_artists.dat",
        "seeds": args.seeds,
        "fedrec_als": round(means["fedrec_als"], 4),
        "implicit_als": round(means["implicit_als"], 4),
        "popularity": round(means["popularity"], 4),
        "ratio": round(means["fedrec_als"] / means["implicit_als"], 3),
        "metric": METRIC,
        "fedrec_settings": settings,
        "implicit_best": runs[0]["implicit_best"],
        "implicit_best_per_seed": [r["implicit_best"] for r in runs],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
