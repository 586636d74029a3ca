"""The fedrec ServerApp and ClientApp for Flower's own CLI (``flwr run .``).

``pyproject.toml`` points ``[tool.flwr.app.components]`` here. The run config carries one key,
``overrides``: hydra overrides of ``configs/simulate.yaml`` (e.g. ``"dataset=ml100k
federation.rounds=3"``), so ``flwr run`` and ``fedrec simulate`` read the same configs through
the same function (:func:`fedrec.cli.compose`). The number of SuperNodes must equal the
federation's number of clients.

Each SuperNode's node config says where its user's data is: ``store="/path/user.sqlite"`` (a
deployed device: the user's :class:`fedrec.client.FedrecClient` store, with its consent gate,
privacy ledger and sent-log) or ``partition-id=p`` (simulation: user p of the split the run
config names). The store's catalog size must equal the item table the config describes.
"""

from __future__ import annotations

import datetime as dt
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.client.app import build_client_app
from fedrec.client.data_source import SplitUserSource
from fedrec.client.trainer import LocalData
from fedrec.run_dir import RunRecorder
from fedrec.server.app import run_federation
from fedrec.server.checkpoint import CHECKPOINT_FILE

OVERRIDES_KEY = "overrides"
RUN_DIR_KEY = "run-dir"


def _config(run_config: Mapping[str, Any]):
    from fedrec.cli import compose

    return compose("simulate", shlex.split(str(run_config.get(OVERRIDES_KEY, ""))))


class RunConfigSource:
    """Builds the split a run's config names once per process, then serves nodes from it.

    Used for ``partition-id`` nodes only: a node with a ``store`` never builds the split."""

    def __init__(self) -> None:
        self._sources: dict[str, SplitUserSource] = {}

    def local_data(
        self, node_config: Mapping[str, Any], run_config: Mapping[str, Any]
    ) -> tuple[int, LocalData]:
        key = str(run_config.get(OVERRIDES_KEY, ""))
        if key not in self._sources:
            from fedrec.jobs.simulate import prepare_federation

            self._sources[key] = prepare_federation(_config(run_config))[1]
        return self._sources[key].local_data(node_config, run_config)


client_app = build_client_app(RunConfigSource())
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedrec.jobs.simulate import prepare_federation, round_reporter

    cfg = _config(context.run_config)
    _, _, plan = prepare_federation(cfg)
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(str(context.run_config.get(RUN_DIR_KEY) or f"runs/flwr/{stamp}"))
    recorder = RunRecorder(run_dir)
    plan.checkpoint_path = run_dir / CHECKPOINT_FILE  # a record of every round; resume: simulate

    def on_finish(arrays: dict[str, np.ndarray]) -> None:
        np.savez_compressed(run_dir / "item_table.npz", **arrays)

    run_federation(grid, plan, on_round=round_reporter(recorder, plan.rounds), on_finish=on_finish)
