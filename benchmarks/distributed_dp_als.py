"""Distributed DP-ALS against central DP-ALS on SecAgg+, measured in the same run.

The same users, seeds and DP-ALS recipe (the privacy frontier's ε = 8 recipe, chosen there on a
validation split) run through real Flower simulations on SecAgg+ (one node per user):

- **central**: the devices mask their bounded statistics, the server adds all of DP-ALS's noise
  to the unmasked sum (it sees that sum noiseless);
- **distributed, f = 0.9 / 1.0**: every device adds a 1/t share of the noise before masking
  (t = ⌈f · users⌉), the server tops up what dropped shares miss;
- **distributed, f = 0.9, with dropouts**: ``faults.dropout_rate`` of the devices fail in each
  round after the keys were shared, so SecAgg+ recovers their masks, their shares are missing,
  and the server's own ε (``server_view_epsilon``) pays for it.

Reported: full-ranking NDCG@10 after the last round (every user scored), the model's ε, the
server's ε, the share of the noise variance the server added per round, and seconds per round
(training only). The ratios are against the central row of the same run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import run_simulate  # noqa: E402

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

# The privacy frontier's ε = 8 DP-ALS recipe on ML-100K (RESULTS.md, chosen on validation).
RECIPE = [
    "algorithm=als",
    "algorithm.reg=3.0",
    "algorithm.unobserved_weight=0.3",
    "algorithm.clip_norm=1.0",
    "algorithm.max_items=20",
    "algorithm.item_grams=false",
    "algorithm.frequent_fraction=0.05",
    "model.embedding_dim=8",
    "privacy=user",
]


def run(name: str, overrides: list[str], rounds: int, workdir: Path) -> dict[str, float]:
    run_dir = workdir / name.replace(" ", "_").replace(",", "").replace("=", "")
    run_dir.mkdir()
    run_simulate(compose("simulate", overrides), run_dir)
    with open(run_dir / "metrics.csv") as handle:
        rows = {int(r["server_round"]): r for r in csv.DictReader(handle)}
    summary = json.loads((run_dir / "summary.json").read_text())
    training = [rows[r] for r in range(1, rounds + 1)]
    fractions = [r.get("server_noise_fraction") or "1" for r in training]
    return {
        "seconds": sum(float(r["seconds"]) for r in training[:-1]) / max(rounds - 1, 1),
        "ndcg": float(rows[rounds]["ndcg@10"]),
        "epsilon": float(rows[rounds]["user_level_epsilon"]),
        "server_epsilon": float(rows[rounds].get("server_view_epsilon") or "nan"),
        "fractions": "/".join(f"{float(f):.3f}" for f in fractions),
        "accepted": "/".join(str(int(float(r["accepted"]))) for r in training),
        "clipped": summary["secure_aggregation"].get("clipped_values", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--clients", type=int, default=0, help="0: every user of the dataset")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--num-shares", type=int, default=21, help="SecAgg+ neighbours (odd)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    clients = args.clients
    if clients == 0:
        from fedrec.data import load_split

        clients = load_split(compose("simulate", [f"dataset={args.dataset}"]).dataset)
        clients = clients.train.num_users
    # Each device masks items × (d + 1) + d² values; the shares' std sets the range they need.
    # 2 / 2²² levels over ±clipping_range: a quantization step far below any share's std.
    base = [
        f"dataset={args.dataset}",
        *RECIPE,
        f"privacy.user_target_epsilon={args.epsilon}",
        f"federation.num_clients={clients}",
        f"federation.clients_per_round={clients}",
        f"federation.rounds={args.rounds}",
        f"federation.eval_every_rounds={args.rounds}",
        "federation.eval_clients_per_round=-1",
        "federation.state_store=false",
        "federation.timeout_s=600",
        "secure_aggregation=secaggplus",
        f"secure_aggregation.num_shares={args.num_shares}",
        "secure_aggregation.clipping_range=64",
    ]
    variants = {
        "central": base,
        "distributed f=0.9": [*base, "algorithm.noise_shares=0.9"],
        "distributed f=1.0": [*base, "algorithm.noise_shares=1.0"],
        f"distributed f=0.9, {args.dropout:.0%} dropouts": [
            *base,
            "algorithm.noise_shares=0.9",
            f"faults.dropout_rate={args.dropout}",
            "faults.dropout_after_training=0",
        ],
    }
    results: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, overrides in variants.items():
                folder = Path(tmp) / f"seed{seed}"
                folder.mkdir(exist_ok=True)
                result = run(
                    name, [*overrides, f"seed={seed}", f"faults.seed={seed}"], args.rounds, folder
                )
                results[name].append(result)
                print(name, seed, result, flush=True)

    def mean(name: str, key: str) -> float:
        values = [r[key] for r in results[name]]
        return sum(values) / len(values)

    rows = []
    for name in variants:
        first = results[name][0]
        rows.append(
            [
                name,
                f"{mean(name, 'ndcg'):.4f}",
                f"{mean(name, 'ndcg') / mean('central', 'ndcg'):.2f}",
                f"{mean(name, 'epsilon'):.3f}",
                "—" if name == "central" else f"{mean(name, 'server_epsilon'):.3f}",
                "—" if name == "central" else first["fractions"],
                first["accepted"],
                f"{mean(name, 'seconds'):.1f}",
                f"{mean(name, 'seconds') / mean('central', 'seconds'):.2f}",
                str(first["clipped"]),
            ]
        )
    table = markdown_table(
        [
            "noise",
            "ndcg@10",
            "× central",
            "model ε",
            "server's own ε",
            "server's share of the variance, per round (seed 0)",
            "devices in the sum, per round (seed 0)",
            "s / round",
            "× time",
            "clipped",
        ],
        rows,
    )
    print(table)
    if not args.no_write:
        append_results(
            "Distributed DP-ALS against central DP-ALS on SecAgg+",
            f"- setting: {args.dataset}, {clients} users (one Flower node each, every user every "
            f"round), {args.rounds} rounds, seeds {args.seeds}; the privacy frontier's DP-ALS "
            f"recipe (dim 8, Γ 1, B 20, frequent 0.05, item_grams false, reg 3, α₀ 0.3) at user-"
            f"level ε = {args.epsilon:g}, δ 1e-5; SecAgg+ with {args.num_shares} neighbours per "
            "device, clipping_range 64, 2^22 levels. NDCG@10: every user scored after the last "
            "round (mean over seeds). The central row's server sees the noiseless sum, so it has "
            "no ε of its own.\n\n" + table,
        )


if __name__ == "__main__":
    main()
