"""The fedrec ServerApp and ClientApp for Flower's own CLI (``flwr run .``).

``pyproject.toml`` points ``[tool.flwr.app.components]`` here. The run config carries
``overrides``: hydra overrides of ``configs/simulate.yaml`` (e.g. ``"dataset=ml100k
federation.rounds=3"``), so ``flwr run`` and ``fedrec simulate`` read the same configs through
the same function (:func:`fedrec.config.compose`); ``fedrec submit`` checks them before it
submits. ``run-dir``: where ``metrics.csv``, checkpoints, the final item table and
``summary.json`` go (an absolute path on the SuperLink's machine; default
``runs/flwr/<time>`` under the SuperLink's working directory).

Each SuperNode's node config says where its user's data is: ``store="/path/user.sqlite"`` (a
deployed device: the user's :class:`fedrec.client.FedrecClient` store, with its consent gate,
privacy ledger and sent-log) or ``partition-id``/``num-partitions`` (simulation: a block of the
split the run config names). The federation waits for ``federation.num_clients`` nodes (every
user of the dataset when 0; ``federation.cohort_nodes`` on the cohort engine) and then takes
every node that answered discovery.
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config import compose
from fedrec.federation.checkpoint import CHECKPOINT_FILE
from fedrec.flower.client_app import build_client_app
from fedrec.nodes.sources import SplitUserSource
from fedrec.run_dir import RunRecorder

OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"
logger = logging.getLogger("fedrec")


def config_of(run_config: Mapping[str, Any]):
    """The simulate config the run config's ``overrides`` describe."""
    return compose("simulate", shlex.split(str(run_config.get(OVERRIDES_KEY, ""))))


class RunConfigSource:
    """The split a run's config names, built once per process (block nodes only: a node with
    a ``store`` never builds it)."""

    def __init__(self) -> None:
        self._sources: dict[str, SplitUserSource] = {}

    def __call__(self, context: Context) -> SplitUserSource:
        key = str(context.run_config.get(OVERRIDES_KEY, ""))
        if key not in self._sources:
            from fedrec.jobs.simulate import prepare_federation

            self._sources[key] = prepare_federation(config_of(context.run_config))[1]
        return self._sources[key]


def trainer_of(context: Context) -> str:
    """The local trainer the run's config names (``federation.trainer``; auto: the engine's)."""
    return config_of(context.run_config).federation.resolved_trainer


client_app = build_client_app(RunConfigSource(), trainer=trainer_of)
server_app = ServerApp()


def run_dir_of(run_config: Mapping[str, Any]) -> Path:
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return Path(str(run_config.get(RUN_DIR_KEY) or f"runs/flwr/{stamp}")).absolute()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedrec.flower.server_app import run_federation
    from fedrec.jobs.simulate import (
        initial_item_arrays,
        prepare_federation,
        round_reporter,
    )
    from fedrec.jobs.summary import simulate_summary

    started = time.perf_counter()
    cfg = config_of(context.run_config)
    split, source, plan = prepare_federation(cfg)
    run_dir = run_dir_of(context.run_config)
    recorder = RunRecorder(run_dir)
    plan.checkpoint_path = run_dir / CHECKPOINT_FILE  # a record of every round
    logger.info("run directory: %s", run_dir)
    secagg = cfg.secure_aggregation
    final = run_federation(
        grid,
        plan,
        initial_item_arrays(cfg, split.train.num_items),
        nodes=cfg.federation.nodes(len(source)),
        timeout_s=cfg.federation.timeout_s,
        on_round=round_reporter(recorder, plan.rounds),
        context=context,
        secure_aggregation=secagg if secagg.enabled else None,
    )
    np.savez_compressed(run_dir / "item_table.npz", **final)
    simulate_summary(
        cfg,
        plan,
        recorder,
        split,
        num_clients=len(source),
        resumed_after=None,
        wall_s=time.perf_counter() - started,
    )
