"""Federated (no DP, and DP-SGD) against the centralized reference, same code, same split.

Runs, in one process and one sitting, on ML-100K leave-one-out:
- the centralized reference (``fedrec train +experiment=ml100k_implicit``),
- ``fedrec simulate +experiment=ml100k_federated`` (every user a Flower client, no DP),
- ``fedrec simulate +experiment=ml100k_federated_dp`` (DP-SGD on every device),
and appends a table with each federated metric as a ratio of the centralized one.

    python benchmarks/federated_vs_centralized.py [--skip-dp] [--override key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

from fedrec.cli import compose  # noqa: E402
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--override", nargs="*", default=[], help="hydra overrides for both runs")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    reference, central_s = centralized(args.seed)
    rows = [
        [
            "centralized (fedrec train)",
            *[f"{reference[m]:.4f}" for m in METRICS],
            "–",
            "–",
            f"{central_s:.0f}",
        ]
    ]
    experiments = ["ml100k_federated"] + ([] if args.skip_dp else ["ml100k_federated_dp"])
    notes = []
    for experiment in experiments:
        final, wall, plan = federated(experiment, args.seed, args.override)
        ratios = [final[m] / reference[m] for m in METRICS]
        epsilon = final.get("epsilon_max", 0.0)
        rows.append(
            [
                experiment,
                *[f"{final[m]:.4f}" for m in METRICS],
                " / ".join(f"{r:.3f}" for r in ratios),
                f"{epsilon:.2f} (median {final.get('epsilon_median', 0.0):.2f})"
                if epsilon
                else "–",
                f"{wall:.0f}",
            ]
        )
        notes.append(f"- {experiment}: {plan}")
    table = markdown_table(
        [
            "run",
            *METRICS,
            "ratio to centralized (" + " / ".join(METRICS) + ")",
            "ε per user, max (median)",
            "wall (s)",
        ],
        rows,
    )
    body = (
        f"ML-100K implicit, leave-one-out, seed {args.seed}; centralized measured in the same "
        f"run.\n\n{table}\n\n" + "\n".join(notes) + "\n"
    )
    print(body)
    if not args.no_record:
        append_results("Federated vs centralized (ML-100K)", body)


if __name__ == "__main__":
    main()
