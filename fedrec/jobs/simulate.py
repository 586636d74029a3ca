"""``fedrec simulate``: a federation on Flower's simulation engine.

The config is checked against the rules table (:mod:`fedrec.config.rules`), the split and the
server's plan are built (:func:`prepare_federation`), and the one round loop
(:func:`fedrec.federation.loop.run_rounds`) runs inside a Flower ServerApp over the Flower
transport (per-user or cohort nodes; SecAgg+ when configured). The run directory gets the
config, ``metrics.csv``, checkpoints, the devices' state store, the final item table and
``summary.json`` (:mod:`fedrec.jobs.summary`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config.algorithm import AlgorithmSpec
from fedrec.config.rules import check_simulate
from fedrec.config.simulate import FederationSpec, SimulateJobConfig
from fedrec.data import Split, load_split
from fedrec.federation.als_rule import AlsServerPlan
from fedrec.federation.checkpoint import CHECKPOINT_FILE, ServerCheckpoint, load_checkpoint
from fedrec.federation.loop import FederationPlan
from fedrec.federation.record import RoundRecord
from fedrec.model.mf import random_item_arrays
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy import PrivacySpec
from fedrec.privacy.als import check_share_range, plan_dp_als
from fedrec.privacy.user_level import plan_user_level
from fedrec.protocol.settings import LocalEvalSpec, RoundSettings
from fedrec.run_dir import CONFIG_YAML, RunRecorder

logger = logging.getLogger("fedrec")

STATE_STORE_FILE = "device_states.sqlite"


def choose_users(num_users: int, num_clients: int, seed: int) -> np.ndarray:
    """Every user, or a seeded random subset of ``num_clients`` of them (sorted)."""
    if num_clients == 0 or num_clients >= num_users:
        return np.arange(num_users)
    return np.sort(np.random.default_rng(seed).choice(num_users, num_clients, replace=False))


def round_settings(cfg: SimulateJobConfig) -> RoundSettings:
    fed = cfg.federation
    return RoundSettings(
        model=cfg.model,
        training=fed.local,
        privacy=cfg.privacy,
        evaluation=LocalEvalSpec(
            full_metrics=list(cfg.eval.full_metrics),
            sampled_metrics=list(cfg.eval.sampled_metrics),
            rating_metrics=cfg.eval.rating_metrics,
            refit_epochs=fed.refit_epochs,
            refit_lr=fed.refit_lr,
        ),
        explicit=cfg.dataset.mode == "explicit",
        seed=cfg.seed,
        server_round=0,
        weight_by_examples=fed.weighting == "examples",
        als=cfg.algorithm.als_spec(),
        algorithm=cfg.algorithm.name,
    )


def prepare_federation(
    cfg: SimulateJobConfig,
) -> tuple[Split, SplitUserSource, FederationPlan]:
    """The split, the users' data source and the server's plan that a config describes."""
    check_simulate(cfg)
    split = load_split(cfg.dataset)
    fed = cfg.federation
    users = choose_users(split.train.num_users, fed.num_clients, cfg.seed)
    eval_clients = len(users) if fed.eval_clients_per_round < 0 else fed.eval_clients_per_round
    settings = round_settings(cfg)
    if settings.privacy.solve_noise_multiplier and not settings.privacy.planned_rounds:
        # The rounds a user is expected to train in: rounds × their chance of being sampled.
        expected = math.ceil(fed.rounds * min(fed.clients_per_round, len(users)) / len(users))
        settings.privacy = dataclasses.replace(settings.privacy, planned_rounds=expected)
    user_level, als = None, None
    if cfg.algorithm.name == "als":
        als = als_server_plan(
            cfg.algorithm,
            cfg.privacy,
            rounds=fed.rounds,
            devices_per_round=min(fed.clients_per_round, len(users)),
        )
        if als.privacy is not None and als.privacy.distributed:
            check_share_range(als.privacy, cfg.secure_aggregation.clipping_range)
        settings.als = als.spec
    elif settings.privacy.user_level:
        user_level = plan_user_level(
            settings.privacy,
            num_clients=len(users),
            clients_per_round=fed.clients_per_round,
            rounds=fed.rounds,
        )
    plan = FederationPlan(
        settings=settings,
        strategy=cfg.strategy,
        rounds=fed.rounds,
        clients_per_round=fed.clients_per_round,
        eval_clients_per_round=eval_clients,
        seed=cfg.seed if cfg.seed >= 0 else int(np.random.SeedSequence().entropy % 2**31),
        eval_every_rounds=fed.eval_every_rounds,
        user_level=user_level,
        als=als,
        min_replies=fed.min_replies,
        defense=cfg.defense,
        crash_after_replies_of_round=cfg.faults.server_crash_round,
    )
    plan.check_population(len(users))
    return split, SplitUserSource(split, users), plan


def als_server_plan(
    algorithm: AlgorithmSpec, privacy: PrivacySpec, *, rounds: int, devices_per_round: int
) -> AlsServerPlan:
    """The server's half of a federated (DP-)ALS run; with ``privacy=user``, the DP-ALS noise
    from ``user_target_epsilon`` (solved over the run's releases) or ``user_noise_multiplier``;
    with ``algorithm.noise_shares`` > 0, added by the devices in shares of 1/t, t that share of
    ``devices_per_round`` (rounded up), and the spec the devices receive asks them for it."""
    dp = None
    spec = algorithm.als_spec()
    if algorithm.covariance_start and rounds < 2:
        raise ValueError(
            f"algorithm.covariance_start needs federation.rounds >= 2 (got {rounds}): round 1 "
            "releases the popularity, round 2 the item covariance that makes the first table"
        )
    if privacy.user_level:
        shares = (
            math.ceil(algorithm.noise_shares * devices_per_round - 1e-9)
            if algorithm.noise_shares > 0
            else 0
        )
        dp = plan_dp_als(
            clip_norm=algorithm.clip_norm,
            max_items=algorithm.max_items,
            delta=privacy.delta,
            rounds=rounds,
            noise_multiplier=None
            if privacy.user_target_epsilon is not None
            else privacy.user_noise_multiplier,
            target_epsilon=privacy.user_target_epsilon,
            gram_noise_scale=algorithm.gram_noise_scale,
            item_grams=algorithm.item_grams,
            count_noise_scale=algorithm.count_noise_scale,
            noise_shares=shares,
            covariance_start=algorithm.covariance_start,
            accountant=privacy.accountant,
        )
        if dp.distributed:
            spec = dataclasses.replace(
                spec,
                noise_shares=shares,
                noise_multiplier=dp.noise_multiplier,
                gram_noise_scale=dp.gram_noise_scale,
                count_noise_scale=dp.count_noise_scale,
            )
        logger.info(
            "DP-ALS: noise multiplier %.4g (Γ=%g, B=%d); user-level ε %.4g after %d rounds (δ=%g)",
            dp.noise_multiplier,
            dp.clip_norm,
            dp.max_items,
            dp.epsilon_of(dp.run_history(rounds)),
            rounds,
            dp.delta,
        )
    return AlsServerPlan(
        spec,
        frequent_fraction=algorithm.frequent_fraction,
        privacy=dp,
        popularity_weight=algorithm.popularity_weight,
        covariance_start=algorithm.covariance_start,
    )


def initial_item_arrays(cfg: SimulateJobConfig, num_items: int) -> dict[str, np.ndarray]:
    """The run's seeded random item table (see :func:`random_item_arrays`)."""
    return random_item_arrays(
        num_items,
        cfg.model.embedding_dim,
        init_std=cfg.model.init_std,
        seed=cfg.seed,
        explicit=cfg.dataset.mode == "explicit",
        global_mean=cfg.federation.global_bias_init,
    )


def _progress(record: RoundRecord, rounds: int) -> str:
    parts = [f"round {record.server_round}/{rounds}"]
    if record.server_round == 0:
        parts.append("untrained baseline")
    else:
        parts.append(
            f"{record.accepted}/{record.sampled} updates ({record.outcome_counts()}), "
            + ("SKIPPED (model unchanged)" if record.skipped else f"loss {record.train_loss:.4f}")
        )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in record.evaluation.items() if k != "num_users")
    if shown:
        parts.append(shown)
    if record.epsilon_max > 0:
        parts.append(f"ε max {record.epsilon_max:.3g} (median {record.epsilon_median:.3g})")
    if record.users_at_budget:
        parts.append(f"{record.users_at_budget} users at their budget")
    if record.user_level_epsilon is not None:
        parts.append(f"user-level ε {record.user_level_epsilon:.3g}")
    parts.append(f"{record.seconds:.1f}s")
    return " | ".join(parts)


def round_reporter(recorder: RunRecorder, rounds: int):
    """Log a progress line and append the round's row to metrics.csv."""

    def on_round(record: RoundRecord) -> None:
        recorder.append(record.row())
        logger.info(_progress(record, rounds))

    return on_round


def load_run_config(run_dir: str | Path) -> SimulateJobConfig:
    """The typed config a run directory's ``config.yaml`` holds."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG_YAML
    if not path.exists():
        raise FileNotFoundError(f"{path}: no config to resume the run from")
    merged = OmegaConf.merge(OmegaConf.structured(SimulateJobConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def _resume_point(cfg: SimulateJobConfig) -> tuple[SimulateJobConfig, Path, ServerCheckpoint]:
    """``resume=<run dir>``: that run's own config (its injected server crash not repeated)
    and its last checkpoint."""
    run_dir = Path(cfg.resume)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if not checkpoint_path.exists():
        raise FileNotFoundError(f"{checkpoint_path}: no checkpoint; nothing to resume")
    resumed = load_run_config(run_dir)
    if resumed.secure_aggregation.enabled:
        raise ValueError(f"{run_dir} ran with secure aggregation, which keeps no checkpoints")
    resumed.resume = ""
    resumed.faults = dataclasses.replace(resumed.faults, server_crash_round=0)
    return resumed, run_dir, load_checkpoint(checkpoint_path)


def ray_init_args(fed: FederationSpec) -> dict[str, Any]:
    """``ray.init``'s arguments for Flower's Ray backend: attach to the cluster at
    ``federation.ray_address``, or start a local Ray bound to loopback with ``ray_cpus`` cores."""
    if fed.ray_address:
        # Ray refuses resource arguments when it joins a cluster: the cluster's nodes own them.
        return {"address": fed.ray_address, "log_to_driver": True}
    return {
        # "local", not None: None would join whatever cluster RAY_ADDRESS or the last
        # `ray start` on this machine points to, and then refuse num_cpus.
        "address": "local",
        "num_cpus": fed.ray_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": True,
    }


def run_simulate(
    cfg: SimulateJobConfig, run_dir: str | Path, *, client_mods: Sequence = ()
) -> dict[str, float]:
    """Run the federation; return the last round's evaluation metrics (and ε).

    ``client_mods`` are Flower client mods added to every ClientApp (e.g. to audit messages).
    With ``cfg.resume`` set, the run in that directory continues instead (``run_dir`` is then
    only where this invocation's own log lives).
    """
    from flwr.simulation import run_simulation

    from fedrec.flower.client_app import build_client_app
    from fedrec.flower.faults import FaultInjector, SecAggFaultInjector
    from fedrec.flower.server_app import build_server_app
    from fedrec.jobs.summary import simulate_summary

    started = time.perf_counter()
    checkpoint = None
    if cfg.resume:
        cfg, run_dir, checkpoint = _resume_point(cfg)
        logger.info("resuming %s after round %d", run_dir, checkpoint.server_round)
    run_dir = Path(run_dir)
    recorder = RunRecorder(run_dir)
    if not (run_dir / CONFIG_YAML).exists():  # called without the CLI: keep what resume needs
        from omegaconf import OmegaConf

        recorder.write_config(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    state_store = run_dir / STATE_STORE_FILE if cfg.federation.state_store else None
    if checkpoint is None and state_store is not None and state_store.exists():
        raise ValueError(
            f"{state_store} exists: {run_dir} holds a run; continue it with resume={run_dir} "
            "or use a new directory"
        )
    for row in checkpoint.rows if checkpoint else []:
        recorder.append(row)  # metrics.csv as of the checkpoint: a lost round is not kept
    split, source, plan = prepare_federation(cfg)
    plan.resume = checkpoint
    plan.checkpoint_path = run_dir / CHECKPOINT_FILE
    fed, secagg = cfg.federation, cfg.secure_aggregation
    logger.info(
        "federation: %d clients (users), %d per round, %d rounds, %d items; privacy %s",
        len(source),
        fed.clients_per_round,
        fed.rounds,
        split.train.num_items,
        cfg.privacy.mode,
    )
    finished: dict[str, np.ndarray] = {}
    workers: Counter[str] = Counter()  # replies per Ray node: where the work ran
    nodes = cfg.federation.nodes(len(source))
    server_app = build_server_app(
        plan,
        initial_item_arrays(cfg, split.train.num_items),
        nodes=nodes,
        timeout_s=fed.timeout_s,
        on_round=round_reporter(recorder, fed.rounds),
        on_finish=finished.update,
        secure_aggregation=secagg if secagg.enabled else None,
        workers=workers,
    )
    if cfg.faults.injects_client_faults:  # outermost, so inner mods see a normal round
        injector = SecAggFaultInjector if secagg.enabled else FaultInjector
        client_mods = [injector(cfg.faults, secagg.timeout_s or fed.timeout_s), *client_mods]
    client_app = build_client_app(
        source,
        mods=client_mods,
        state_store=None if state_store is None else str(state_store),
        trainer=fed.resolved_trainer,
        chunk_size=fed.cohort_chunk,
        secure_aggregation=secagg.enabled,
    )
    # Ray's notice that it will stop overriding CUDA_VISIBLE_DEVICES: we ask for no GPUs anyway.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": 0.0},
            "init_args": ray_init_args(fed),
        },
    )
    if workers:
        logger.info("replies by worker: %s", ", ".join(f"{k}: {n}" for k, n in workers.items()))
    if not finished:
        raise RuntimeError("the federation did not finish; see the log above for the error")
    np.savez_compressed(run_dir / "item_table.npz", **finished)
    return simulate_summary(
        cfg,
        plan,
        recorder,
        split,
        num_clients=len(source),
        resumed_after=None if checkpoint is None else checkpoint.server_round,
        wall_s=time.perf_counter() - started,
        workers=dict(workers),
    )
