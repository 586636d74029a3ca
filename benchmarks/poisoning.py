"""Poisoning against defenses on ML-100K over several seeds, recorded in RESULTS.md.

Usage: ``python benchmarks/poisoning.py [--seeds 0,1,2] [hydra overrides of configs/poison.yaml]``

Per seed (the seed picks the honest users, the initial item table, the devices' sampling and
the attacker's fake devices): no attack under every defense (each defense's accuracy cost);
``boost`` and ``pipattack`` at 5 % malicious clients without defense, with ``norm_bound`` and
with the default defense; at 1 % and 10 % without defense and with the default. One in-process
federation each (``fedrec.jobs.poison``). The 5 % attacks against ``median`` and ``krum`` are
left out to keep the run under ~15 minutes on 2 cores: neither is a candidate default (their
accuracy cost without attack is measured here), and the single-seed table before this one has
them.

The issue's goal is checked on the mean over seeds: exposure@10 under 5 % malicious clients
with the default defense ≤ 2× its no-attack value with the same defense, and honest NDCG@10 ≥
95 % of the undefended no-attack model. A no-attack exposure of 0 makes the first condition
"exposure is 0"; the target's median rank among unseen items is printed beside it to show how
far the attack moved the item even when it reached nobody's top 10.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import append_results, markdown_table

from fedrec.config import compose
from fedrec.data import load_split
from fedrec.jobs.poison import run_poison

DEFENSES = ["none", "norm_bound", "median", "trimmed_mean", "krum"]
ATTACKS = ["boost", "pipattack"]
GOAL_FRACTION = 0.05

Point = tuple[str, float, str]  # attack, malicious share, defense


def default_defense() -> str:
    """The defense ``configs/poison.yaml`` selects (the one the goal is about)."""
    return compose("poison", []).defense.name


def grid(default: str) -> list[Point]:
    points: list[Point] = [("none", 0.0, d) for d in DEFENSES]
    attacked_defenses = list(dict.fromkeys(["none", "norm_bound", default]))
    points += [(a, GOAL_FRACTION, d) for a in ATTACKS for d in attacked_defenses]
    points += [(a, f, d) for a in ATTACKS for f in (0.01, 0.1) for d in ("none", default)]
    return points


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation over seeds."""
    return float(np.mean(values)), float(np.std(values))


def fmt(values: list[float], digits: int) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    args, overrides = parser.parse_known_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    default = default_defense()
    root = Path("runs/poison") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    started = time.perf_counter()
    split = load_split(compose("poison", overrides).dataset)
    finals: dict[Point, list[dict[str, float]]] = defaultdict(list)
    points = grid(default)
    for seed in seeds:
        for attack, fraction, defense in points:
            cfg = compose(
                "poison",
                [
                    *overrides,
                    f"attack={attack}",
                    f"attack.fraction={fraction}",
                    f"defense={defense}",
                    f"seed={seed}",
                ],
            )
            run_dir = root / f"seed{seed}_{attack}_{fraction:g}_{defense}"
            final = run_poison(cfg, run_dir, split=split, plot=False)
            finals[(attack, fraction, defense)].append(final)
            print(seed, attack, fraction, defense, final, flush=True)
    wall = time.perf_counter() - started

    def values(point: Point, key: str) -> list[float]:
        return [float(f[key]) for f in finals[point]]

    # NDCG@10 of the undefended no-attack model, per seed: each run is compared with its own
    # seed's baseline, then the ratios are averaged.
    undefended = values(("none", 0.0, "none"), "ndcg@10")

    def ratios(point: Point) -> list[float]:
        pairs = zip(values(point, "ndcg@10"), undefended, strict=True)
        return [v / u if u > 0 else float("nan") for v, u in pairs]

    rows = []
    for point in points:
        attack, fraction, defense = point
        clean = ("none", 0.0, defense)
        rows.append(
            [
                attack,
                f"{fraction:.0%}" if attack != "none" else "–",
                str(int(finals[point][0]["malicious_clients"])),
                defense,
                fmt(values(point, "exposure@10"), 3),
                fmt(values(clean, "exposure@10"), 3),
                fmt(values(point, "target_median_rank"), 0),
                fmt(values(point, "ndcg@10"), 4),
                fmt(ratios(point), 2),
            ]
        )
    table = markdown_table(
        [
            "attack",
            "malicious share",
            "malicious clients",
            "defense",
            "final exposure@10",
            "no-attack exposure, same defense",
            "target median rank (of ~1,600 unseen)",
            "honest NDCG@10",
            "NDCG@10 / undefended no-attack (per seed)",
        ],
        rows,
    )
    goals = []
    for attack in ATTACKS:
        point = (attack, GOAL_FRACTION, default)
        exposure = np.mean(values(point, "exposure@10"))
        clean = np.mean(values(("none", 0.0, default), "exposure@10"))
        ratio = np.mean(ratios(point))
        met = exposure <= 2 * clean and ratio >= 0.95
        undefended_exposure = fmt(values((attack, GOAL_FRACTION, "none"), "exposure@10"), 3)
        goals.append(
            f"- goal, 5 % {attack}, default defense `{default}` (mean over seeds {seeds}): "
            f"exposure {fmt(values(point, 'exposure@10'), 3)} vs {clean:.3f} without attack "
            f"(limit {2 * clean:.3f}; undefended under attack {undefended_exposure}), target "
            f"median rank {fmt(values(point, 'target_median_rank'), 0)} vs "
            f"{fmt(values(('none', 0.0, default), 'target_median_rank'), 0)} without attack; "
            f"NDCG@10 {fmt(ratios(point), 2)}× the undefended model (limit 0.95) → "
            f"**{'met' if met else 'NOT met'}**"
        )
    cfg = compose("poison", overrides)
    fed = cfg.federation
    target = int(finals[points[-1]][0]["target_item"])
    body = [
        f"- setting: ML-100K implicit, {fed.num_clients} honest users all training every round, "
        f"{fed.rounds} rounds, FedAvg server_lr {fed.server_lr:g}, Adam lr {fed.local.lr}, "
        f"{fed.local.epochs} local epochs, dim {cfg.model.embedding_dim}, no DP; target item "
        f"{target} (the coldest item with data); malicious clients = share × honest clients, on "
        "top of them. In-process rounds (honest devices on the cohort engine, the strategy's "
        f"server rule; not Flower's transport). Seeds {seeds} (honest users, initial table, "
        f"device sampling, attacker); mean ± std over seeds. {wall / 60:.1f} min; run "
        f"directories under `{root}`.",
        "- exposure@10: share of honest users with the target in their top 10 unseen items "
        "(final round). Median rank: the target's 0-based rank among a user's unseen items, "
        "median over honest users.",
        f"- default defense: `{default}` (configs/poison.yaml). 5 % attacks against median and "
        "krum are not rerun here (see the single-seed table above: exposure 0, NDCG 0.66–0.72×).",
        *goals,
        "",
        table,
    ]
    print("\n".join(body))
    append_results(
        "Poisoning over seeds: target-item promotion against defenses (ML-100K)",
        "\n".join(body),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
