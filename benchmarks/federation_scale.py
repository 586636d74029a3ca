"""A MovieLens-1M-sized federation with DP: does it complete, how long is a round, where does
the time go.

1. Profile: ``train_round`` (the code every Flower client runs) on a sample of users of the
   synthetic ML-1M-shaped data, in this process, with each phase timed.
2. Run: ``fedrec simulate +experiment=synthetic_ml1m_federated_dp`` on the per-user engine
   (all 6,040 users are Flower clients; 60 train and 60 evaluate per round unless overridden)
   and record the wall time per round. ``benchmarks/cohort_speed.py`` measures the cohort
   engine that the scenario itself now uses. The difference between (1) × clients and (2)
   is Flower/Ray messaging and scheduling.

    python benchmarks/federation_scale.py [--profile-users 100] [--override key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

import fedrec.privacy.accounting as accounting  # noqa: E402
import fedrec.training.opacus_round as trainer  # noqa: E402
from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import (  # noqa: E402
    initial_item_arrays,
    prepare_federation,
    round_settings,
    run_simulate,
)

# (module, function) pairs timed by wrapping; epsilon_spent is cached per distinct history.
PHASES = {
    "local_model": trainer,
    "make_private": trainer,
    "train_epoch": trainer,
    "epsilon_spent": accounting,
}


def profile(cfg, users: int) -> tuple[dict[str, float], float, int]:
    """Mean seconds per client update, by phase, over ``users`` random users."""
    split, source, plan = prepare_federation(cfg)
    settings = round_settings(cfg)
    items = initial_item_arrays(cfg, split.train.num_items)
    spent: dict[str, float] = defaultdict(float)
    originals = {name: getattr(module, name) for name, module in PHASES.items()}

    def timed(name):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return wrapper

    for name, module in PHASES.items():
        setattr(module, name, timed(name))
    chosen = np.random.default_rng(0).choice(len(source), users, replace=False)
    sizes = []
    started = time.perf_counter()
    try:
        for partition in chosen:
            _, data = source.local_data({"partition-id": int(partition)})
            sizes.append(len(data.train_items))
            trainer.train_round(
                items,
                data,
                trainer.DeviceState(),
                model_spec=settings.model,
                training=settings.training,
                privacy=settings.privacy,
                explicit=False,
                seed=int(partition),
            )
    finally:
        for name, module in PHASES.items():
            setattr(module, name, originals[name])
    total = (time.perf_counter() - started) / users
    per_phase = {name: spent[name] / users for name in PHASES}
    per_phase["other (loader, update diff, state)"] = total - sum(per_phase.values())
    return per_phase, total, int(np.median(sizes))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile-users", type=int, default=100)
    parser.add_argument("--override", nargs="*", default=[])
    parser.add_argument("--skip-run", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    per_user = [
        "federation.engine=per_user",
        "federation.clients_per_round=60",
        "federation.eval_clients_per_round=60",
        "federation.rounds=2",
        "federation.eval_every_rounds=1",
    ]
    cfg = compose(
        "simulate", ["+experiment=synthetic_ml1m_federated_dp", *per_user, *args.override]
    )
    phases, per_update, median_size = profile(cfg, args.profile_users)
    rows = [
        [name, f"{seconds * 1000:.1f}", f"{seconds / per_update:.0%}"]
        for name, seconds in phases.items()
    ]
    body = (
        f"Synthetic ML-1M shape ({cfg.dataset.options['preset']}), dim "
        f"{cfg.model.embedding_dim}, privacy {cfg.privacy.mode} (σ={cfg.privacy.noise_multiplier},"
        f" {cfg.privacy.grad_sample_mode} clipping), local epochs {cfg.federation.local.epochs}, "
        f"batch {cfg.federation.local.batch_size}.\n\n"
        f"**Per client update, in process** ({args.profile_users} random users, median log "
        f"{median_size} interactions, one thread): {per_update * 1000:.0f} ms\n\n"
        + markdown_table(["phase", "ms per update", "share"], rows)
        + "\n"
    )
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as run_dir:
            started = time.perf_counter()
            final = run_simulate(cfg, run_dir)
            wall = time.perf_counter() - started
            import json

            summary = json.loads((Path(run_dir) / "summary.json").read_text())
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        seconds = summary["seconds_per_round"]
        per_round = [f"round {i}: {s:.0f} s" for i, s in enumerate(seconds) if i > 0]
        fed = cfg.federation
        expected = fed.clients_per_round * per_update / max(fed.ray_cpus or 2, 1)
        body += (
            f"\n**Flower simulation** (`fedrec simulate +experiment=synthetic_ml1m_federated_dp`): "
            f"{summary['num_clients']} clients, {fed.clients_per_round} training and "
            f"{fed.eval_clients_per_round} evaluating per round, {fed.rounds} rounds; completed "
            f"in {wall:.0f} s ({', '.join(per_round)}; round 0 = Ray start-up + baseline "
            f"evaluation: {seconds[0]:.0f} s). Updates: {summary['updates']}. Final: "
            + ", ".join(f"{k} {v:.4f}" for k, v in final.items())
            + ".\n"
            f"Training alone would take ≈ {expected:.0f} s per round on 2 workers at the "
            f"in-process rate; the rest of a round is evaluation plus Flower/Ray messaging.\n"
            f"Peak RSS: driver {peak_mb:.0f} MB, largest child process {children_mb:.0f} MB.\n"
        )
    print(body)
    if not args.no_record:
        append_results("MovieLens-1M-sized federation with DP (synthetic)", body)


if __name__ == "__main__":
    main()
