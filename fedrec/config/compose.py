"""Compose a command's typed config from ``configs/`` and hydra overrides."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

CONFIG_DIR_ENV = "FEDREC_CONFIG_DIR"

# command → "module:Class" of its schema, imported only when that command is composed.
COMMAND_SCHEMAS = {
    "train": "fedrec.jobs.train:TrainJobConfig",
    "simulate": "fedrec.config.simulate:SimulateJobConfig",
    "sweep": "fedrec.jobs.sweep:SweepJobConfig",
    "tune": "fedrec.jobs.tune:TuneJobConfig",
    "audit": "fedrec.jobs.audit:AuditJobConfig",
    "poison": "fedrec.jobs.poison:PoisonJobConfig",
}


def config_dir() -> Path:
    """``configs/`` beside the package, or ``$FEDREC_CONFIG_DIR``."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[2] / "configs"


def schema_of(command: str) -> type:
    if command not in COMMAND_SCHEMAS:
        raise ValueError(f"unknown command '{command}'; accepted: {', '.join(COMMAND_SCHEMAS)}")
    module, _, name = COMMAND_SCHEMAS[command].partition(":")
    return getattr(importlib.import_module(module), name)


def compose(command: str, overrides: list[str] | None = None) -> Any:
    """The typed config a command would run with, for scripts and tests (no run directory)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=f"{command}_schema", node=schema_of(command))
    if GlobalHydra.instance().is_initialized():
        # Inside a running fedrec command (e.g. a sweep composing its runs): same search path.
        cfg = hydra_compose(config_name=command, overrides=list(overrides or []))
    else:
        with initialize_config_dir(
            version_base="1.3", config_dir=str(config_dir()), job_name=command
        ):
            cfg = hydra_compose(config_name=command, overrides=list(overrides or []))
    return OmegaConf.to_object(cfg)
