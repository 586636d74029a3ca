"""Poisoning against defenses on ML-100K, recorded in RESULTS.md (``fedrec poison``).

Usage: ``python benchmarks/poisoning.py [hydra overrides of configs/poison.yaml ...]``

The grid: no attack under every defense (each defense's accuracy cost); ``boost`` and
``pipattack`` at 5 % malicious clients under every defense; at 1 % and 10 % without defense and
with the default one (``norm_bound``). One in-process federation each (``fedrec.jobs.poison``).
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
import time
from pathlib import Path

from common import append_results, markdown_table

from fedrec.cli import compose
from fedrec.jobs.poison import run_poison

DEFENSES = ["none", "norm_bound", "median", "trimmed_mean", "krum"]
ATTACKS = ["boost", "pipattack"]
DEFAULT_DEFENSE = "norm_bound"


def grid() -> list[tuple[str, float, str]]:
    points = [("none", 0.0, d) for d in DEFENSES]
    points += [(a, 0.05, d) for a in ATTACKS for d in DEFENSES]
    points += [(a, f, d) for a in ATTACKS for f in (0.01, 0.1) for d in ("none", DEFAULT_DEFENSE)]
    return points


def main(overrides: list[str]) -> None:
    root = Path("runs/poison") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    started = time.perf_counter()
    results = []
    for attack, fraction, defense in grid():
        cfg = compose(
            "poison",
            [*overrides, f"attack={attack}", f"attack.fraction={fraction}", f"defense={defense}"],
        )
        run_dir = root / f"{attack}_{fraction:g}_{defense}"
        final = run_poison(cfg, run_dir)
        series = _series(run_dir / "metrics.csv")
        results.append((attack, fraction, defense, final, series))
        print(attack, fraction, defense, final, flush=True)
    wall = time.perf_counter() - started
    base = {d: r[3] for r in results for d in [r[2]] if r[0] == "none"}
    undefended = base["none"]["ndcg@10"]
    rows = []
    for attack, fraction, defense, final, series in results:
        rows.append(
            [
                attack,
                f"{fraction:.0%}" if attack != "none" else "–",
                str(final["malicious_clients"]),
                defense,
                " → ".join(f"{v:.2f}" for v in series),
                f"{final['exposure@10']:.3f}",
                f"{base[defense]['exposure@10']:.3f}",
                f"{final['ndcg@10']:.4f}",
                f"{final['ndcg@10'] / undefended:.2f}",
            ]
        )
    cfg = compose("poison", overrides)
    fed = cfg.federation
    table = markdown_table(
        [
            "attack",
            "malicious share",
            "malicious clients",
            "defense",
            f"exposure@10 every {fed.eval_every_rounds} rounds (round 0 first)",
            "final exposure@10",
            "no-attack exposure, same defense",
            "honest NDCG@10",
            "NDCG@10 / undefended no-attack",
        ],
        rows,
    )
    goals = []
    for attack in ATTACKS:
        final = next(r[3] for r in results if r[:3] == (attack, 0.05, DEFAULT_DEFENSE))
        clean = base[DEFAULT_DEFENSE]["exposure@10"]
        ratio = final["ndcg@10"] / undefended
        met = final["exposure@10"] <= 2 * clean and ratio >= 0.95
        goals.append(
            f"- goal (5 % {attack}, default defense {DEFAULT_DEFENSE}: exposure ≤ 2× no-attack, "
            f"NDCG@10 ≥ 95 % of undefended): exposure {final['exposure@10']:.3f} vs "
            f"{clean:.3f} no-attack, NDCG@10 {ratio:.2f}× → {'met' if met else 'NOT met'}"
        )
    body = [
        f"- setting: ML-100K implicit, {fed.num_clients} honest users all training every round, "
        f"{fed.rounds} rounds, FedAvg server_lr {fed.server_lr:g}, Adam lr {fed.local.lr}, "
        f"{fed.local.epochs} local epochs, dim {cfg.model.embedding_dim}, no DP; target item "
        f"{results[-1][3]['target_item']} (the coldest item with data); malicious clients = "
        "share × honest clients, on top of them. In-process rounds (honest devices on the "
        "cohort engine, the strategy's server rule; not Flower's transport). "
        f"{wall / 60:.1f} min; run directories under `{root}`.",
        "- exposure@10: share of honest users with the target in their top 10 unseen items.",
        *goals,
        "",
        table,
    ]
    print(table)
    append_results("Poisoning: target-item promotion against defenses (ML-100K)", "\n".join(body))


def _series(path: Path) -> list[float]:
    with path.open() as handle:
        return [float(row["exposure@10"]) for row in csv.DictReader(handle)]


if __name__ == "__main__":
    main(sys.argv[1:])
