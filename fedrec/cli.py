"""``fedrec <command> [hydra overrides]``: the command-line entry points.

Each command is a hydra app over ``configs/<command>.yaml`` whose typed schema is a dataclass, and
calls a plain job function with the typed config and its run directory. Hydra's ``-m`` (multirun)
works for sweeps; a sweep optimises the value the job returns.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from fedrec.config.compose import CONFIG_DIR_ENV, compose, config_dir
from fedrec.ops.commands import TOOLS

__all__ = ["compose", "config_dir", "main"]

logger = logging.getLogger("fedrec")


def _train_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.jobs.train import TrainJobConfig, run_train

    return TrainJobConfig, run_train, "ndcg@10"


def _simulate_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.config.simulate import SimulateJobConfig
    from fedrec.jobs.simulate import run_simulate

    return SimulateJobConfig, run_simulate, "ndcg@10"


def _sweep_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.jobs.sweep import SweepJobConfig, run_sweep

    return SweepJobConfig, run_sweep, "ndcg@10"


def _audit_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.jobs.audit import AuditJobConfig, run_audit

    return AuditJobConfig, run_audit, "auc_no_dp"


def _poison_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.jobs.poison import PoisonJobConfig, run_poison

    return PoisonJobConfig, run_poison, "exposure@10"


def _tune_job() -> tuple[type, Callable[[Any, str], dict[str, float]], str]:
    from fedrec.jobs.tune import TuneJobConfig, run_tune

    return TuneJobConfig, run_tune, "ndcg@10"


COMMANDS: dict[str, tuple[str, Callable[[], tuple[type, Callable[..., dict[str, float]], str]]]] = {
    "train": ("centralized, non-private MF reference", _train_job),
    "simulate": ("federated (DP-)MF or (DP-)ALS, one Flower client per user", _simulate_job),
    "tune": ("choose federated ALS's settings on a validation split, report test", _tune_job),
    "sweep": ("privacy budget vs accuracy: one federation per (mode, ε, seed)", _sweep_job),
    "audit": ("what a curious or active server learns about users' items, per ε", _audit_job),
    "poison": ("malicious clients promote a target item; the server's defenses", _poison_job),
}


def _usage() -> str:
    lines = ["usage: fedrec <command> [key=value ...] [-m for a sweep]", "", "commands:"]
    lines += [f"  {name:<10} {about}" for name, (about, _) in COMMANDS.items()]
    lines += ["", "operator commands (fedrec <command> --help):"]
    lines += [f"  {name:<10} {about}" for name, about in TOOLS.items()]
    lines += [
        "",
        f"configs: {config_dir()}  (override with ${CONFIG_DIR_ENV})",
        "see a command's config: fedrec <command> --cfg job",
    ]
    return "\n".join(lines)


def _run_command(command: str) -> None:
    import hydra
    from hydra.core.config_store import ConfigStore
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from fedrec.console import route_logs
    from fedrec.data.errors import DataError
    from fedrec.run_dir import RunRecorder

    schema, job, objective = COMMANDS[command][1]()
    ConfigStore.instance().store(name=f"{command}_schema", node=schema)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=command)
    def entry(cfg: DictConfig) -> float | None:
        route_logs()
        try:
            typed = OmegaConf.to_object(cfg)
        except Exception as err:  # omegaconf raises its own validation types
            logger.error("invalid config: %s", err)
            sys.exit(2)
        run_dir = HydraConfig.get().runtime.output_dir
        RunRecorder(run_dir).write_config(OmegaConf.to_yaml(cfg, resolve=True))
        try:
            result = job(typed, run_dir)
        except (DataError, ValueError, FileNotFoundError) as err:
            logger.error("%s", err)
            sys.exit(2)
        logger.info("run directory: %s", run_dir)
        value = result.get(objective)
        return None if value is None else float(value)

    entry()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command = args[0]
    if command in TOOLS:
        from fedrec.ops.commands import run_tool

        run_tool(command, args[1:])
        return
    if command not in COMMANDS:
        print(f"fedrec: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        sys.exit(2)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # The run directory's log file is named after the command (simulate.log), not after cli.py.
    job_name = (
        [] if any(a.startswith("hydra.job.name=") for a in args) else [f"hydra.job.name={command}"]
    )
    sys.argv = [f"fedrec {command}", *args[1:], *job_name]
    _run_command(command)


if __name__ == "__main__":
    main()
