"""How much of a DP-ALS result is the noise draw: one recipe over several draws.

Usage: ``python benchmarks/dp_als_draws.py [--dataset ml100k] [--draws 6] [--epsilons 1 8]
[--accountant rdp|prv] [--settings 4] [--solve NU,REG,ALPHA ...] [--count-noise 1]
[--validation-only]``

The privacy frontier scores each DP-ALS recipe on a few seeds, and one seed is one draw of the
noise. Before reading a change between two frontier runs as a gain or a loss, this script
measures the spread: the covariance-start recipe the frontier chose on ML-100K (dim 8, 5 %
frequent items, B 20, 2 rounds), under the device-solve settings the frontier's federated ALS
grid offers (flat λ 3 or 10, frequency-scaled λ 0.003/α₀ 1 or 0.01/α₀ 0.3), each over
``--draws`` seeds, on the validation split and on the test split (mean ± std). ``--settings``
runs only the first N of those settings, ``--solve`` replaces them with your own (ν, reg, α₀
triples); ``--count-noise`` scales the count release's noise (the covariance then gets more of
the budget); ``--accountant`` solves z with Opacus' PRV accountant instead of RDP (the same ε,
less noise); ``--validation-only`` leaves the test split alone, for choosing settings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.config.algorithm import AlgorithmSpec  # noqa: E402
from fedrec.data import load_split  # noqa: E402
from fedrec.jobs.tune import candidates, run_candidate, validation_split  # noqa: E402
from fedrec.privacy import PrivacySpec  # noqa: E402

SOLVE_SETTINGS = (  # (reg_exponent, reg, unobserved_weight)
    (0.0, 3.0, 0.3),
    (0.0, 10.0, 0.3),
    (1.0, 0.003, 1.0),
    (1.0, 0.01, 0.3),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--frequent", type=float, default=0.05)
    parser.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    parser.add_argument("--settings", type=int, default=len(SOLVE_SETTINGS))
    parser.add_argument("--solve", nargs="+", metavar="NU,REG,ALPHA", default=None)
    parser.add_argument("--count-noise", type=float, default=1.0)
    parser.add_argument("--validation-only", action="store_true")
    args = parser.parse_args()
    if args.draws < 2:
        parser.error("--draws must be at least 2 (a spread needs two draws)")
    settings = SOLVE_SETTINGS[: args.settings]
    if args.solve:
        settings = tuple(tuple(one.split(",")) for one in args.solve)
        try:
            settings = tuple((float(nu), float(reg), float(alpha)) for nu, reg, alpha in settings)
        except ValueError:  # not three fields, or not numbers
            parser.error("--solve takes NU,REG,ALPHA triples of numbers, e.g. 1,0.1,0.3")
    split = load_split(compose("simulate", [f"dataset={args.dataset}"]).dataset)
    splits = {"validation": validation_split(split)}
    if not args.validation_only:
        splits["test"] = split
    started = time.perf_counter()
    rows = []
    for eps in args.epsilons:
        privacy = PrivacySpec(
            mode="user", user_target_epsilon=eps, delta=1e-5, accountant=args.accountant
        )
        for nu, reg, alpha in settings:
            base = AlgorithmSpec(
                name="als",
                clip_norm=1.0,
                max_items=20,
                item_grams=False,
                covariance_start=True,
                frequent_fraction=args.frequent,
                count_noise_scale=args.count_noise,
                reg=reg,
                unobserved_weight=alpha,
                reg_exponent=nu,
            )
            point = candidates(base, args.dim, {"embedding_dim": [args.dim]})[0]
            scores = {}
            for name, data in splits.items():
                scores[name] = [
                    run_candidate(
                        data, base, point, rounds=2, privacy=privacy, seed=s, metrics=("ndcg@10",)
                    )["ndcg@10"]
                    for s in range(args.draws)
                ]
            cells = [
                f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" for v in scores.values()
            ]
            rows.append([f"{eps:g}", f"ν {nu:g}, reg {reg:g}, α₀ {alpha:g}", *cells])
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    print(f"- machine: {machine()}; {args.dataset}, {args.draws} draws, dim {args.dim}, ", end="")
    wall = time.perf_counter() - started
    print(
        f"frequent {args.frequent}, count noise ×{args.count_noise:g}, {args.accountant} "
        f"accountant; total wall {wall:.0f} s\n"
    )
    header = ["ε", "device solve", *(f"{name} ndcg@10" for name in splits)]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
