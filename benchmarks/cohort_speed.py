"""The cohort engine against the per-user engine on the ML-1M-shaped federation with DP.

One run measures, on the same synthetic federation (6,040 users, 3,706 items, dim 32, DP-SGD):

1. baseline: the per-user path (``train_round``: one Opacus engine, model and optimizer per
   user per round), in this process, one thread, on a sample of users, by phase;
2. the cohort engine (``train_cohort``) in this process, one thread, on every user; the ratio
   of client updates per second is the speed-up; a cProfile of it says where the time goes;
3. a real Flower simulation with ``federation.engine=cohort``: every user trains in every
   round; seconds per round and the peak memory of the whole process tree.

    python benchmarks/cohort_speed.py [--baseline-users 60] [--rounds 2] [--override k=v ...]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, grouped_profile, markdown_table  # noqa: E402
from federation_scale import profile as per_user_profile  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import (  # noqa: E402
    initial_item_arrays,
    prepare_federation,
    round_settings,
    run_simulate,
)
from fedrec.privacy.accounting import clear_caches  # noqa: E402
from fedrec.training.closed_form.engine import train_cohort  # noqa: E402
from fedrec.training.state import (
    CohortMember,
    DeviceState,  # noqa: E402
)

PROFILE_GROUPS = {  # cProfile function name fragment → what it is
    "normal_": "Gaussian noise (per user, per step, every parameter)",
    "_fused_adam_": "Adam steps (fused kernel, per user)",
    "accumulate": "per-example gradients, norms, clipping, scatter",
    "rdp.py": "RDP curves (once per distinct (σ, q) per process)",
    "_compute_": "RDP curves (once per distinct (σ, q) per process)",
    "_epoch_schedule": "Poisson sampling",
    "examples": "negatives and batch assembly",
}


class TreeMemory:
    """Peak resident memory of this process and all its descendants (Ray's workers included),
    sampled every 0.5 s from /proc: ``peak_mb`` sums each process's RSS (pages two processes
    share, such as Ray's object store and the libraries, count once per process);
    ``peak_pss_mb`` sums their proportional set size (a shared page split between its
    sharers), which adds up to the memory the tree really holds. ``root`` is the tree's first
    process (this one by default)."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self.peak_mb = 0.0
        self.peak_pss_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss, pss = _tree_memory_mb(self.root)
            self.peak_mb = max(self.peak_mb, rss)
            self.peak_pss_mb = max(self.peak_pss_mb, pss)


def _tree_rss_mb(root: int) -> float:
    return _tree_memory_mb(root)[0]


def _tree_memory_mb(root: int) -> tuple[float, float]:
    """(Σ RSS, Σ PSS) in MB over ``root`` and its descendants."""
    rss = pss = 0.0
    stack = [root]
    while stack:
        pid = stack.pop()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return rss, pss


def members_of(source, indices, seed_offset: int = 0) -> list[CohortMember]:
    members = []
    for index in indices:
        key, data = source.local_data({"partition-id": int(index)})
        members.append(CohortMember(key, data, DeviceState(), seed_offset + int(index)))
    return members


def cohort_rate(cfg, items, members) -> tuple[float, float]:
    """(seconds, updates per second) of one cohort round over ``members``, from a cold start
    (no privacy curve cached yet, as in a fresh worker)."""
    clear_caches()
    settings = round_settings(cfg)
    started = time.perf_counter()
    result = train_cohort(
        items,
        members,
        model_spec=settings.model,
        training=settings.training,
        privacy=settings.privacy,
        explicit=False,
        server_round=1,
        chunk_size=cfg.federation.cohort_chunk,
    )
    seconds = time.perf_counter() - started
    assert all(o.status == "trained" for o in result.outcomes), "every user should train"
    return seconds, len(members) / seconds


def cohort_profile(cfg, items, members) -> list[list[str]]:
    profiler = cProfile.Profile()
    profiler.enable()
    cohort_rate(cfg, items, members)
    profiler.disable()
    return grouped_profile(profiler, PROFILE_GROUPS)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-users", type=int, default=60)
    parser.add_argument("--profile-users", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--override", nargs="*", default=[])
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [
        "+experiment=synthetic_ml1m_federated_dp",
        "federation.engine=cohort",
        "federation.clients_per_round=6040",
        "federation.eval_clients_per_round=600",
        f"federation.rounds={args.rounds}",
        f"federation.eval_every_rounds={args.rounds}",
        *args.override,
    ]
    cfg = compose("simulate", overrides)
    split, source, plan = prepare_federation(cfg)
    items = initial_item_arrays(cfg, split.train.num_items)
    everyone = np.arange(len(source))
    sample = np.random.default_rng(0).choice(len(source), args.baseline_users, replace=False)

    clear_caches()
    phases, per_update, median_size = per_user_profile(cfg, args.baseline_users)
    baseline_rate = 1 / per_update
    _, sample_rate = cohort_rate(cfg, items, members_of(source, sample))
    all_seconds, all_rate = cohort_rate(cfg, items, members_of(source, everyone))
    profile_rows = cohort_profile(cfg, items, members_of(source, everyone[: args.profile_users]))
    fed = cfg.federation
    body = (
        f"Synthetic ML-1M shape: {len(source)} users, dim {cfg.model.embedding_dim}, privacy "
        f"{cfg.privacy.mode} (σ={cfg.privacy.noise_multiplier}, C={cfg.privacy.max_grad_norm}),"
        f" local epochs {fed.local.epochs}, batch {fed.local.batch_size}, {fed.local.optimizer} "
        f"lr {fed.local.lr}. One thread, in process.\n\n"
        + markdown_table(
            ["engine", "users", "client updates / s", "ratio"],
            [
                [
                    "per-user (Opacus ghost, baseline)",
                    str(args.baseline_users),
                    f"{baseline_rate:.1f}",
                    "1.0",
                ],
                [
                    "cohort, same users",
                    str(args.baseline_users),
                    f"{sample_rate:.1f}",
                    f"{sample_rate / baseline_rate:.1f}",
                ],
                [
                    "cohort, every user",
                    str(len(source)),
                    f"{all_rate:.1f}",
                    f"{all_rate / baseline_rate:.1f}",
                ],
            ],
        )
        + f"\n\nEvery user once, one thread: {all_seconds:.1f} s.\n\n"
        f"**Before** (per-user path, ms per update, median log {median_size}):\n\n"
        + markdown_table(
            ["phase", "ms", "share"],
            [[n, f"{s * 1000:.1f}", f"{s / per_update:.0%}"] for n, s in phases.items()],
        )
        + f"\n\n**After** (cohort engine, cProfile of {args.profile_users} users, seconds):\n\n"
        + markdown_table(["where", "s", "share"], profile_rows)
        + "\n"
    )
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as run_dir, TreeMemory() as memory:
            started = time.perf_counter()
            final = run_simulate(cfg, run_dir)
            wall = time.perf_counter() - started
            summary = json.loads((Path(run_dir) / "summary.json").read_text())
            rows = [json.loads(json.dumps(r)) for r in _metrics(run_dir)]
        train_rounds = [r for r in rows if int(float(r["server_round"])) > 0]
        body += (
            f"\n**Flower simulation** (`federation.engine=cohort`, {fed.cohort_nodes} nodes, "
            f"{fed.ray_cpus or os.cpu_count()} Ray CPUs): {summary['num_clients']} clients, "
            f"all {fed.clients_per_round} training in every round, {fed.rounds} rounds, "
            f"{fed.eval_clients_per_round} users evaluated in the last. Wall {wall:.0f} s.\n\n"
            + markdown_table(
                ["round", "users trained", "seconds (train + eval)", "ε max"],
                [
                    [
                        r["server_round"],
                        r["accepted"],
                        f"{float(r['seconds']):.1f}",
                        f"{float(r['epsilon_max']):.3g}",
                    ]
                    for r in train_rounds
                ],
            )
            + f"\n\nFinal: {', '.join(f'{k} {v:.4f}' for k, v in final.items())}. Updates: "
            f"{summary['updates']}.\nPeak resident memory of the process tree (driver + Ray): "
            f"{memory.peak_mb:.0f} MB.\n"
        )
    print(body)
    if not args.no_record:
        append_results("Cohort engine vs per-user engine, ML-1M-shaped federation with DP", body)


def _metrics(run_dir: str) -> list[dict]:
    import csv

    with open(Path(run_dir) / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


if __name__ == "__main__":
    main()
