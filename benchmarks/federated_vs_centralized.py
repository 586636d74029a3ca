"""Federated (no DP, and DP-SGD) against the centralized reference, same code, same split.

Runs, in one process and one sitting, on ML-100K leave-one-out:
- the centralized reference (``fedrec train +experiment=ml100k_implicit``),
- ``fedrec simulate +experiment=ml100k_federated`` (every user a Flower client, no DP),
- ``fedrec simulate +experiment=ml100k_federated_dp`` (DP-SGD on every device),
and appends a table with each federated metric as a ratio of the centralized one.

    python benchmarks/federated_vs_centralized.py [--seeds 0 1 2] [--skip-dp]
        [--override key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.data import load_split  # noqa: E402
from fedrec.eval import evaluate_scores  # noqa: E402
from fedrec.jobs.simulate import run_simulate  # noqa: E402
from fedrec.jobs.train import score_function  # noqa: E402
from fedrec.model import fit_centralized  # noqa: E402

METRICS = ["ndcg@10", "recall@20", "sampled_hr@10"]


def centralized(seed: int) -> tuple[dict[str, float], float]:
    cfg = compose("train", ["+experiment=ml100k_implicit", f"seed={seed}"])
    split = load_split(cfg.dataset)
    started = time.perf_counter()
    model = fit_centralized(split.train, cfg.model, cfg.training, explicit=False, seed=seed)
    return evaluate_scores(score_function(model), split, cfg.eval), time.perf_counter() - started


def federated(experiment: str, seed: int, overrides: list[str]) -> tuple[dict, float, str]:
    cfg = compose("simulate", [f"+experiment={experiment}", f"seed={seed}", *overrides])
    with tempfile.TemporaryDirectory() as run_dir:
        started = time.perf_counter()
        final = run_simulate(cfg, run_dir)
        wall = time.perf_counter() - started
    plan = (
        f"{cfg.federation.clients_per_round} clients/round, {cfg.federation.rounds} rounds, "
        f"privacy {cfg.privacy.mode}"
    )
    if cfg.privacy.mode == "record":
        plan += (
            f" (σ={cfg.privacy.noise_multiplier}, C={cfg.privacy.max_grad_norm}, "
            f"δ={cfg.privacy.delta})"
        )
    return final, wall, plan


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--override", nargs="*", default=[], help="hydra overrides for both runs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    experiments = ["ml100k_federated"] + ([] if args.skip_dp else ["ml100k_federated_dp"])
    results: dict[str, list[tuple[dict, float]]] = {"centralized": []}
    plans: dict[str, str] = {}
    for seed in args.seeds:  # seeds the models and the federation; the split is fixed
        results["centralized"].append(centralized(seed))
        for experiment in experiments:
            final, wall, plans[experiment] = federated(experiment, seed, args.override)
            results.setdefault(experiment, []).append((final, wall))
    reference = {m: _mean_std([r[m] for r, _ in results["centralized"]])[0] for m in METRICS}
    rows = []
    for name, runs in results.items():
        cells = []
        for m in METRICS:
            mean, std = _mean_std([final[m] for final, _ in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}" if len(runs) > 1 else f"{mean:.4f}")
        per_seed = [
            min(
                final[m] / central[m]
                for final, central in zip(
                    [f for f, _ in runs], [c for c, _ in results["centralized"]], strict=True
                )
            )
            for m in METRICS
        ]
        epsilon = max(final.get("epsilon_max", 0.0) for final, _ in runs)
        median = statistics.median(final.get("epsilon_median", 0.0) for final, _ in runs)
        rows.append(
            [
                "centralized (fedrec train)" if name == "centralized" else name,
                *cells,
                "–"
                if name == "centralized"
                else " / ".join(
                    f"{_mean_std([f[m] for f, _ in runs])[0] / reference[m]:.3f}" for m in METRICS
                ),
                "–" if name == "centralized" else " / ".join(f"{r:.3f}" for r in per_seed),
                f"{epsilon:.2f} (median {median:.2f})" if epsilon else "–",
                f"{statistics.mean(w for _, w in runs):.0f}",
            ]
        )
    table = markdown_table(
        [
            "run",
            *METRICS,
            "ratio of means to centralized (" + " / ".join(METRICS) + ")",
            "worst per-seed ratio",
            "ε per user, max (median)",
            "wall per seed (s)",
        ],
        rows,
    )
    seeds = ", ".join(map(str, args.seeds))
    body = (
        f"ML-100K implicit, leave-one-out (split seed 0), model seeds {seeds} (each seeds the "
        f"centralized model and the whole federation); mean ± std over seeds; centralized "
        f"measured in the same "
        f"run.\n\n{table}\n\n" + "\n".join(f"- {e}: {p}" for e, p in plans.items()) + "\n"
    )
    print(body)
    if not args.no_record:
        append_results("Federated vs centralized (ML-100K)", body)


if __name__ == "__main__":
    main()
