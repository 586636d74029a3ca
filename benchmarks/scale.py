"""Scale: the sparse cohort engine (rows each user touches, lazy DP noise) against today's dense
one on the ML-1M-shaped federation, and a federation of ML-20M's size, both with DP-SGD.

1. ML-1M shape (6,040 users, 3,706 items, dim 32, DP-SGD σ = 1 with plain SGD, batch 32, one
   local epoch): a real Flower simulation on the cohort engine in which every user trains in
   every round, once with ``federation.trainer=closed_form`` (the dense per-step reference:
   every user's copy of the whole table, noise on every row at every step) and once with
   ``federation.trainer=sparse``, in the same run, each as its own ``fedrec simulate``
   process. Seconds per round, client updates per second end to end, peak memory of that
   process tree (driver and Ray's processes).
   Then both engines in process on one thread (warm privacy curves) and a cProfile of the
   sparse one: what remains.
2. ML-20M size (138,493 users, 26,744 items, ~20M interactions, seeded synthetic), the sparse
   engine, ``--ml20m-clients`` users per round.

    python benchmarks/scale.py [--rounds 3] [--ml20m-clients 10000] [--skip-ml20m] [--no-record]
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cohort_speed import TreeMemory, members_of  # noqa: E402
from common import append_results, grouped_profile, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import (  # noqa: E402
    initial_item_arrays,
    prepare_federation,
    round_settings,
)
from fedrec.training.closed_form.engine import train_cohort  # noqa: E402
from fedrec.training.closed_form.sparse import train_cohort_sparse  # noqa: E402

ML1M = [
    "+experiment=synthetic_ml1m_federated_dp",
    "federation.local.optimizer=sgd",  # lazy noise needs plain SGD
    "federation.local.lr=0.5",
    "federation.clients_per_round=6040",
    "federation.eval_clients_per_round=600",
    "federation.ray_cpus=2",
]
PROFILE_GROUPS = {
    "rdp.py": "RDP curves (first use of each (σ, q) in a process)",
    "_compute_": "RDP curves (first use of each (σ, q) in a process)",
    "normal_": "Gaussian noise (user vectors per step, item rows lazily)",
    "accumulate": "per-example gradients, norms, clipping, scatter",
    "_prepare": "drawing the round's batches and negatives",
    "examples": "drawing the round's batches and negatives",
    "_epoch_schedule": "drawing the round's batches and negatives",
    "index_add_": "sparse SGD steps and sums (index_add)",
}


def flower_run(overrides: list[str]) -> dict:
    """One ``fedrec simulate`` in a process of its own, as a user runs it (so a run's memory
    does not include what an earlier run left in this process): per training round its seconds
    and updates per second; peak memory of that process and its descendants (Ray included)."""
    cfg = compose("simulate", overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        command = [sys.executable, "-m", "fedrec.cli", "simulate", *overrides]
        started = time.perf_counter()
        process = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"])
        with TreeMemory(process.pid) as memory:
            returncode = process.wait()
        wall = time.perf_counter() - started
        if returncode:
            raise RuntimeError(f"{' '.join(command)} exited with {returncode}")
        with open(Path(run_dir) / "metrics.csv") as handle:
            rows = [r for r in csv.DictReader(handle) if int(float(r["server_round"])) > 0]
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    last = cfg.federation.rounds
    # The last round also evaluates: its seconds are not training alone.
    train_rows = [r for r in rows if int(float(r["server_round"])) < last] or rows
    seconds = [float(r["seconds"]) for r in train_rows]
    accepted = [float(r["accepted"]) for r in train_rows]
    return {
        "seconds": seconds,
        "median_s": float(np.median(seconds)),
        "updates_per_s": float(np.median([a / s for a, s in zip(accepted, seconds, strict=True)])),
        "accepted": accepted,
        "peak_mb": memory.peak_mb,
        "peak_pss_mb": memory.peak_pss_mb,
        "wall_s": wall,
        "final": summary["final"],
        "epsilon_max": float(rows[-1]["epsilon_max"]),
        "replies_by_node": summary["ray"]["train_replies_by_node"],
    }


def in_process(cfg, engine, members) -> float:
    """Client updates per second, one thread, privacy curves already cached."""
    settings = round_settings(cfg)
    split, _, _ = prepare_federation(cfg)
    items = initial_item_arrays(cfg, split.train.num_items)
    options = dict(
        model_spec=settings.model,
        training=settings.training,
        privacy=settings.privacy,
        explicit=False,
        server_round=1,
    )
    engine(items, members, **options)  # warm: the RDP curves of these users' (σ, q)
    started = time.perf_counter()
    result = engine(items, members, **options)
    seconds = time.perf_counter() - started
    assert all(o.status == "trained" for o in result.outcomes)
    return len(members) / seconds, (items, options)


def sparse_profile(items, options, members) -> list[list[str]]:
    profiler = cProfile.Profile()
    profiler.enable()
    train_cohort_sparse(items, members, **options)
    profiler.disable()
    return grouped_profile(profiler, PROFILE_GROUPS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile-users", type=int, default=1200)
    parser.add_argument("--ml20m-clients", type=int, default=10_000)
    parser.add_argument("--ml20m-rounds", type=int, default=2)
    parser.add_argument("--skip-ml20m", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    rounds = [f"federation.rounds={args.rounds}", f"federation.eval_every_rounds={args.rounds}"]
    runs = {}
    # Today's engine as it ran before this benchmark: dense, 256 users per chunk.
    for trainer, chunk in (("closed_form", 256), ("sparse", 0)):
        runs[trainer] = flower_run(
            [*ML1M, *rounds, f"federation.trainer={trainer}", f"federation.cohort_chunk={chunk}"]
        )
        print(trainer, runs[trainer], flush=True)
    dense, sparse = runs["closed_form"], runs["sparse"]
    body = (
        "ML-1M shape (6,040 users, 3,706 items, dim 32), DP-SGD σ = 1, C = 1, plain SGD lr 0.5,"
        " batch 32, one local epoch; every user trains in every round; cohort engine, 2 Flower"
        f" nodes, 2 Ray CPUs; {args.rounds} rounds, the last also evaluates 600 users (its time"
        " is left out of the per-round figures). Memory: Σ RSS counts a page shared by"
        " processes (Ray's object store, libraries) once per process; Σ PSS splits it.\n\n"
        + markdown_table(
            [
                "trainer",
                "s / round",
                "updates / s",
                "ratio",
                "peak MB, Σ RSS",
                "peak MB, Σ PSS",
                "ε max",
            ],
            [
                [
                    name,
                    " / ".join(f"{s:.1f}" for s in run["seconds"]),
                    f"{run['updates_per_s']:.0f}",
                    f"{run['updates_per_s'] / dense['updates_per_s']:.2f}",
                    f"{run['peak_mb']:.0f}",
                    f"{run['peak_pss_mb']:.0f}",
                    f"{run['epsilon_max']:.3g}",
                ]
                for name, run in (
                    ("closed_form, 256 users per chunk (dense, baseline)", dense),
                    ("sparse, chunks sized by memory", sparse),
                )
            ],
        )
        + "\n\nFinal metrics (same seeds; the sparse run draws its noise lazily, so the numbers"
        f" differ by draw): dense {json.dumps(dense['final'])}; sparse "
        f"{json.dumps(sparse['final'])}.\n"
    )
    torch.set_num_threads(1)
    cfg = compose("simulate", [*ML1M, *rounds])
    _, source, _ = prepare_federation(cfg)
    members = members_of(source, np.arange(args.profile_users))
    dense_rate, _ = in_process(cfg, train_cohort, members)
    sparse_rate, (items, options) = in_process(cfg, train_cohort_sparse, members)
    body += (
        f"\nIn process, one thread, {args.profile_users} users, warm privacy curves: dense "
        f"{dense_rate:.0f} updates/s, sparse {sparse_rate:.0f} updates/s "
        f"({sparse_rate / dense_rate:.2f}×).\n\n**What remains** (cProfile of the sparse engine,"
        " same users, warm):\n\n"
        + markdown_table(["where", "s", "share"], sparse_profile(items, options, members))
        + "\n"
    )
    torch.set_num_threads(os.cpu_count() or 1)
    if not args.skip_ml20m:
        started = time.perf_counter()
        big = flower_run(
            [  # the ML-1M scenario's settings, spelled out (its defaults pin the dataset)
                "dataset=synthetic_ml20m",
                "privacy=record",
                "model.embedding_dim=32",
                "federation.engine=cohort",
                "federation.cohort_nodes=2",
                "federation.num_clients=0",
                "federation.local.epochs=1",
                "federation.local.batch_size=32",
                "federation.local.optimizer=sgd",
                "federation.local.lr=0.5",
                "strategy.server_lr=240",
                f"federation.clients_per_round={args.ml20m_clients}",
                "federation.eval_clients_per_round=1000",
                f"federation.rounds={args.ml20m_rounds}",
                f"federation.eval_every_rounds={args.ml20m_rounds}",
                "federation.ray_cpus=2",
                "federation.trainer=sparse",
            ]
        )
        print("ml20m", big, flush=True)
        body += (
            "\n**ML-20M size** (138,493 users, 26,744 items, ~20M interactions, seeded synthetic;"
            f" the same settings), sparse engine, {args.ml20m_clients} users per round, "
            f"{args.ml20m_rounds} rounds: seconds per training round "
            f"{' / '.join(f'{s:.1f}' for s in big['seconds'])}, {big['updates_per_s']:.0f} "
            f"client updates/s, peak memory of the process tree {big['peak_mb']:.0f} MB (Σ RSS), "
            f"{big['peak_pss_mb']:.0f} MB (Σ PSS),"
            f" wall {time.perf_counter() - started:.0f} s including generating the log; final "
            f"{json.dumps(big['final'])}.\n"
        )
    print(body)
    if not args.no_record:
        append_results("Scale: sparse cohort engine with lazy DP noise", body)


if __name__ == "__main__":
    main()
