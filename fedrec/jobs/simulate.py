"""``fedrec simulate``: one Flower client per user on Flower's simulation engine."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedrec.client.app import build_client_app
from fedrec.client.data_source import SplitUserSource
from fedrec.client.messages import RoundSettings
from fedrec.client.secagg_app import build_secagg_client_app
from fedrec.client.trainer import LocalEvalSpec, LocalTrainingSpec
from fedrec.cohort.app import CohortPlan, build_cohort_app
from fedrec.data import DatasetSpec, Split, load_split
from fedrec.eval import EvalSpec
from fedrec.jobs.faults import FaultInjector, FaultSpec, SecAggFaultInjector
from fedrec.model import ModelSpec
from fedrec.privacy import PRIVACY_MODES, PrivacySpec
from fedrec.privacy.user_level import plan_user_level
from fedrec.run_dir import CONFIG_YAML, RunRecorder
from fedrec.server.app import ServerPlan, build_server_app
from fedrec.server.checkpoint import CHECKPOINT_FILE, ServerCheckpoint, load_checkpoint
from fedrec.server.defenses import DefenseSpec
from fedrec.server.secure_aggregation import (
    SERVER_SAW,
    SecureAggregationSpec,
    build_secagg_server_app,
)
from fedrec.server.strategy import RoundRecord, StrategySpec

logger = logging.getLogger("fedrec")

WEIGHTINGS = ("uniform", "examples")
STATE_STORE_FILE = "device_states.sqlite"
ENGINES = ("per_user", "cohort")


@dataclass
class FederationSpec:
    """Mirrors ``configs/federation/*.yaml``: who takes part, how often, how they train.

    ``num_clients`` 0 means every user of the dataset; ``eval_clients_per_round`` -1 means every
    client, 0 none. ``weighting``: ``uniform`` (default; a client's log size stays on the device)
    or ``examples`` (FedAvg by log size, which tells the server each user's count). ``local``
    is how each device trains in a round (``federation.local.epochs``, ``.lr``, ...): the very
    settings the server sends. ``timeout_s``: how long the server waits for a round's replies;
    ``min_replies``: a round with fewer accepted updates is skipped (not with user-level DP).
    ``state_store``: simulated devices keep their state in ``device_states.sqlite`` in the run
    directory (what makes ``resume=`` possible) rather than in the simulation's memory.
    """

    num_clients: int = 0
    clients_per_round: int = 20
    rounds: int = 10
    local: LocalTrainingSpec = field(default_factory=LocalTrainingSpec)
    weighting: str = "uniform"
    eval_clients_per_round: int = -1
    refit_epochs: int = 0
    refit_lr: float = 0.05
    global_bias_init: float = 0.0
    eval_every_rounds: int = 1
    timeout_s: float = 3600.0
    min_replies: int = 1
    state_store: bool = True
    client_cpus: float = 1.0
    ray_cpus: int = 0  # 0: all cores
    # per_user: one Flower node per user (the deployment's shape). cohort: cohort_nodes nodes,
    # each simulating a block of users with fedrec.cohort (same per-user DP-SGD, same results).
    engine: str = "per_user"
    cohort_nodes: int = 2
    cohort_chunk: int = 256

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"federation.weighting='{self.weighting}'; accepted: uniform, examples"
            )
        if self.num_clients < 0:
            raise ValueError(f"federation.num_clients={self.num_clients}; expected >= 0")
        if self.engine not in ENGINES:
            raise ValueError(f"federation.engine='{self.engine}'; accepted: {', '.join(ENGINES)}")
        if self.cohort_nodes < 1 or self.cohort_chunk < 1:
            raise ValueError("federation.cohort_nodes and federation.cohort_chunk must be >= 1")


@dataclass
class SimulateJobConfig:
    """The schema of ``configs/simulate.yaml``."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    federation: FederationSpec = field(default_factory=FederationSpec)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    secure_aggregation: SecureAggregationSpec = field(default_factory=SecureAggregationSpec)
    seed: int = 0
    resume: str = ""  # a run directory: continue that run after its last checkpointed round
    # How the server combines the round's updates: none (the strategy's mean) or a robust rule
    # (configs/defense/, the rules fedrec poison measures); per-user nodes only.
    defense: DefenseSpec = field(default_factory=DefenseSpec)


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


def prepare_federation(cfg: SimulateJobConfig) -> tuple[Split, SplitUserSource, ServerPlan]:
    """The split, the per-node data source and the server's plan that a config describes."""
    split = load_split(cfg.dataset)
    fed = cfg.federation
    users = choose_users(split.train.num_users, fed.num_clients, cfg.seed)
    eval_clients = len(users) if fed.eval_clients_per_round < 0 else fed.eval_clients_per_round
    settings = round_settings(cfg)
    if settings.privacy.solve_noise_multiplier and not settings.privacy.planned_rounds:
        # The rounds a user is expected to train in: rounds × their chance of being sampled.
        expected = math.ceil(fed.rounds * min(fed.clients_per_round, len(users)) / len(users))
        settings.privacy = dataclasses.replace(settings.privacy, planned_rounds=expected)
    user_level = None
    if settings.privacy.user_level:
        user_level = plan_user_level(
            settings.privacy,
            num_clients=len(users),
            clients_per_round=fed.clients_per_round,
            rounds=fed.rounds,
            # On the cohort engine the nodes Poisson-sample the users (fedrec.cohort.app).
            sampling="cohort" if fed.engine == "cohort" else "server",
        )
    plan = ServerPlan(
        settings=settings,
        strategy=cfg.strategy,
        num_items=split.train.num_items,
        num_clients=len(users),
        clients_per_round=fed.clients_per_round,
        eval_clients_per_round=eval_clients,
        rounds=fed.rounds,
        seed=cfg.seed,
        timeout_s=fed.timeout_s,
        global_bias_init=fed.global_bias_init,
        eval_every_rounds=fed.eval_every_rounds,
        user_level=user_level,
        min_replies=fed.min_replies,
        crash_after_replies_of_round=cfg.faults.server_crash_round,
    )
    if cfg.secure_aggregation.enabled:
        check_secure_aggregation(cfg, user_level_dp=user_level is not None)
    if fed.engine == "cohort":
        if cfg.faults.injects_client_faults:
            raise ValueError(
                "faults.dropout_rate/straggler_rate act per user node: use "
                "federation.engine=per_user (a cohort node speaks for many users)"
            )
        plan.cohort_nodes = min(fed.cohort_nodes, len(users))
        plan.min_replies = min(plan.min_replies, plan.cohort_nodes)
        sample_seed = cfg.seed if cfg.seed >= 0 else int(np.random.SeedSequence().entropy % 2**31)
        plan.extra_config = CohortPlan(
            num_clients=len(users),
            clients_per_round=fed.clients_per_round,
            eval_clients_per_round=eval_clients,
            sample_seed=sample_seed,
            chunk_size=fed.cohort_chunk,
            poisson_sampling=int(user_level is not None),
        ).config()
    check_defense(cfg)
    plan.defense = cfg.defense
    return split, SplitUserSource(split, users), plan


def check_defense(cfg: SimulateJobConfig) -> None:
    """Refuse a robust rule where the server does not see one update per user: a cohort node's
    reply is the mean of many users' updates (a median or trimmed mean over two node means
    protects nothing), and secure aggregation shows the server only the round's sum."""
    if cfg.defense.name == "none":
        return
    if cfg.federation.engine != "per_user":
        raise ValueError(
            f"defense={cfg.defense.name} needs federation.engine=per_user: a cohort node sends "
            "the mean of its users' updates, so a robust rule over node replies is meaningless "
            "(fedrec poison measures the defenses per user)"
        )
    if cfg.privacy.user_level:
        raise ValueError(
            f"defense={cfg.defense.name} cannot be combined with privacy.mode={cfg.privacy.mode}: "
            "the server's noise is calibrated to the mean of clipped updates; use defense=none"
        )
    if cfg.secure_aggregation.enabled:
        raise ValueError(
            f"defense={cfg.defense.name} needs each user's update at the server; "
            "secure aggregation shows it only the round's sum: use defense=none"
        )


def check_secure_aggregation(cfg: SimulateJobConfig, *, user_level_dp: bool) -> None:
    """Refuse, at config time, what cannot work when the server sees only a round's sum."""
    fed, reason = cfg.federation, None
    if fed.engine != "per_user":
        reason = "federation.engine=per_user (a cohort node already sends the sum of many users)"
    elif user_level_dp:
        reason = (
            f"privacy.mode none or record, not '{cfg.privacy.mode}': user-level DP clips each "
            "update at the server, which SecAgg+ hides from it (device-side clipping with noise on "
            "the sum is not implemented)"
        )
    elif fed.weighting != "uniform":
        reason = (
            "federation.weighting=uniform: SecAgg+ sums w·update clipped to ±clipping_range "
            "with w <= max_weight, and each weight travels in the clear anyway"
        )
    elif cfg.strategy.name != "fedavg":
        reason = "strategy=fedavg (the SecAgg+ path implements fedrec's FedAvg rule only)"
    elif cfg.strategy.max_update_norm is not None:
        reason = "strategy.max_update_norm unset: a per-update norm bound needs each update"
    elif cfg.faults.server_crash_round or cfg.resume:
        reason = "no resume= and no faults.server_crash_round (no checkpoints on this path)"
    if reason is not None:
        raise ValueError(f"secure_aggregation={cfg.secure_aggregation.name} needs {reason}")
    cfg.secure_aggregation.check_federation(clients_per_round=fed.clients_per_round)


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


def run_simulate(
    cfg: SimulateJobConfig, run_dir: str | Path, *, client_mods: Sequence = ()
) -> dict[str, float]:
    """Run the federation; return the last round's evaluation metrics (and ε).

    ``client_mods`` are Flower client mods added to every ClientApp (e.g. to audit messages).
    With ``cfg.resume`` set, the run in that directory continues instead (``run_dir`` is then
    only where this invocation's own log lives).
    """
    from flwr.simulation import run_simulation

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
    fed, users = cfg.federation, source.users
    logger.info(
        "federation: %d clients (users), %d per round, %d rounds, %d items; privacy %s",
        len(users),
        fed.clients_per_round,
        fed.rounds,
        split.train.num_items,
        cfg.privacy.mode,
    )
    finished: dict[str, np.ndarray] = {}
    secagg = cfg.secure_aggregation
    reporter = round_reporter(recorder, fed.rounds)
    if secagg.enabled:
        server_app = build_secagg_server_app(
            plan, secagg, on_round=reporter, on_finish=finished.update
        )
    else:
        server_app = build_server_app(plan, on_round=reporter, on_finish=finished.update)
    nodes = plan.cohort_nodes or len(users)
    store_path = None if state_store is None else str(state_store)
    if cfg.faults.injects_client_faults:  # outermost, so inner mods see a normal round
        injector = SecAggFaultInjector if secagg.enabled else FaultInjector
        client_mods = [injector(cfg.faults, secagg.timeout_s or fed.timeout_s), *client_mods]
    if secagg.enabled:
        client_app = build_secagg_client_app(source, mods=client_mods, state_store=store_path)
    elif plan.cohort_nodes:
        client_app = build_cohort_app(source, mods=client_mods, state_store=store_path)
    else:
        client_app = build_client_app(source, mods=client_mods, state_store=store_path)
    ray_cpus = fed.ray_cpus or os.cpu_count() or 1
    # Ray's notice that it will stop overriding CUDA_VISIBLE_DEVICES: we ask for no GPUs anyway.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": fed.client_cpus, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": ray_cpus,
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
                "log_to_driver": True,
            },
        },
    )
    if not finished:
        raise RuntimeError("the federation did not finish; see the log above for the error")
    np.savez_compressed(Path(run_dir) / "item_table.npz", **finished)
    last = recorder.rows[-1] if recorder.rows else {}
    final = {
        k: v
        for k, v in last.items()
        if k
        in set(cfg.eval.full_metrics)
        | {f"sampled_{m}" for m in cfg.eval.sampled_metrics}
        | {"rmse", "mae"}
    }
    final |= {
        "epsilon_max": last.get("epsilon_max", 0.0),
        "epsilon_median": last.get("epsilon_median", 0.0),
    }
    if plan.user_level is not None:
        final["user_level_epsilon"] = last.get("user_level_epsilon", 0.0)
    totals = {
        key: sum(row.get(key, 0) for row in recorder.rows)
        for key in ("sampled", "accepted", "failed", "rejected", "budget_exhausted", "declined")
    }
    faults = {key: sum(row.get(key, 0) for row in recorder.rows) for key in ("timed_out",)}
    faults["rounds_skipped"] = sum(row.get("skipped", 0) for row in recorder.rows)
    metric_names = [*final]
    recorder.plot("server_round", ["train_loss", *metric_names], "federated MF")
    wall = time.perf_counter() - started
    summary_privacy = {}
    if cfg.privacy.record_level:
        summary_privacy["epsilon_per_user"] = {
            "min": last.get("epsilon_min", 0.0),
            "median": last.get("epsilon_median", 0.0),
            "max": last.get("epsilon_max", 0.0),
            "users_reporting": last.get("clients_with_epsilon", 0),
            "budget": cfg.privacy.target_epsilon,
            # distinct users who sat out at least one round because their budget was spent
            "users_at_budget": last.get("users_at_budget", 0),
        }
    if plan.user_level is not None:
        summary_privacy["user_level"] = {
            "epsilon": final["user_level_epsilon"],
            "delta": plan.user_level.delta,
            "noise_multiplier": plan.user_level.noise_multiplier,
            "clip_norm": plan.user_level.clip_norm,
            "sample_rate": plan.user_level.sample_rate,
            "denominator": plan.user_level.expected_clients,
            "rounds": plan.user_level.rounds,
            "accountant": plan.user_level.accountant,
            "budget": cfg.privacy.user_target_epsilon,
        }
    recorder.write_summary(
        {
            "job": "simulate",
            "dataset": split.train.source,
            "data_notes": list(split.train.notes),
            "num_clients": len(users),
            "num_items": split.train.num_items,
            "rounds": fed.rounds,
            "privacy": {
                "mode": cfg.privacy.mode,
                "guarantee": PRIVACY_MODES.get(cfg.privacy.mode).guarantee,
                "delta": cfg.privacy.delta,
                "accountant": cfg.privacy.accountant,
                **(
                    {  # DP-SGD's settings, only where DP-SGD runs
                        "noise_multiplier": cfg.privacy.noise_multiplier,
                        "max_grad_norm": cfg.privacy.max_grad_norm,
                    }
                    if cfg.privacy.record_level
                    else {}
                ),
            },
            "final": final,
            "updates": totals,
            "faults": {
                **faults,
                "injected": dataclasses.asdict(cfg.faults),
                "resumed_after_round": None if checkpoint is None else checkpoint.server_round,
            },
            **summary_privacy,
            "secure_aggregation": (
                {
                    **dataclasses.asdict(secagg),
                    "server_saw": SERVER_SAW,
                    "quantization_step": secagg.quantization_step,
                    "clipped_values": sum(
                        row.get("secagg_clipped_values", 0) for row in recorder.rows
                    ),
                }
                if secagg.enabled
                else {"name": "none", "server_saw": "each device's update"}
            ),
            "wall_time_s": wall,
            "seconds_per_round": [row["seconds"] for row in recorder.rows],
        }
    )
    return final
