"""``fedrec simulate defense=...``: the robust rules of ``fedrec poison`` inside the Flower
strategy, on a real ``run_simulation``.

One of six devices is hostile but valid: its update has the right names, shapes and dtypes, is
finite, and adds a large constant to every coordinate. A client mod records each device's
update and each table the server sends, so the test recomputes the server's step by hand.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fedrec.config import compose, config_dir
from fedrec.config.simulate import SimulateJobConfig
from fedrec.jobs.simulate import prepare_federation, run_simulate
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY

CLIENTS, ROUNDS, SERVER_LR, HOSTILE_SHIFT = 6, 2, 2.0, 50.0
HOSTILE_PARTITION = 0


class UpdateLog:
    """Client mod: save every train message's table and every device's reply (its delta);
    the hostile partition's delta is replaced by ``HOSTILE_SHIFT`` on every coordinate."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, msg, context, call_next):
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        sent = {k: v.numpy() for k, v in msg.content[ARRAYS_KEY].items()}
        reply = call_next(msg, context)
        delta = {k: v.numpy().copy() for k, v in reply.content[ARRAYS_KEY].items()}
        if partition == HOSTILE_PARTITION:
            delta = {k: np.full_like(v, HOSTILE_SHIFT) for k, v in delta.items()}
            reply.content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in delta.items()})
        stem = os.path.join(self.directory, f"r{server_round}_p{partition}")
        np.savez(stem + "_sent.npz", **sent)
        np.savez(stem + "_delta.npz", **delta)
        return reply


def _load(path) -> dict[str, np.ndarray]:
    with np.load(path) as arrays:
        return {k: arrays[k] for k in arrays.files}


@pytest.fixture(scope="module")
def defended_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("defended")
    log_dir = run_dir / "log"
    log_dir.mkdir()
    cfg = compose(
        "simulate",
        [
            "defense=trimmed_mean",
            "defense.beta=0.2",  # int(0.2 · 6) = 1 update cut at each end, per coordinate
            f"federation.num_clients={CLIENTS}",
            f"federation.clients_per_round={CLIENTS}",
            f"federation.rounds={ROUNDS}",
            "federation.eval_clients_per_round=0",
            "federation.local.epochs=1",
            "model.embedding_dim=4",
            f"strategy.server_lr={SERVER_LR}",
            "federation.ray_cpus=1",  # one worker: one cold import of torch, not two
        ],
    )
    run_simulate(cfg, run_dir, client_mods=[UpdateLog(str(log_dir))])
    return run_dir, log_dir


def test_the_aggregate_is_the_trimmed_mean_and_ignores_the_hostile_update(defended_run):
    run_dir, log_dir = defended_run
    final = _load(run_dir / "item_table.npz")
    for server_round in range(1, ROUNDS + 1):
        sent = _load(log_dir / f"r{server_round}_p0_sent.npz")
        deltas = [_load(log_dir / f"r{server_round}_p{p}_delta.npz") for p in range(CLIENTS)]
        after = (
            _load(log_dir / f"r{server_round + 1}_p0_sent.npz") if server_round < ROUNDS else final
        )
        for name, table in sent.items():
            stack = np.stack([d[name] for d in deltas])
            trimmed = trim_mean(stack, 0.2)
            np.testing.assert_allclose(after[name], table + SERVER_LR * trimmed, atol=1e-5)
            honest = np.delete(stack, HOSTILE_PARTITION, axis=0)
            # The hostile +50 is cut everywhere: the step stays within the honest range ...
            assert np.all(trimmed <= honest.max(axis=0) + 1e-6)
            # ... where FedAvg's mean would have moved every coordinate by about 50 / 6.
            assert np.all(stack.mean(axis=0) - honest.mean(axis=0) > HOSTILE_SHIFT / CLIENTS - 1)


def test_every_defense_composes_for_simulate():
    for path in sorted((config_dir() / "defense").glob("*.yaml")):
        cfg = compose("simulate", [f"defense={path.stem}"])
        assert isinstance(cfg, SimulateJobConfig) and cfg.defense.name == path.stem
    assert compose("simulate", []).defense.name == "none"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["federation.engine=cohort"], "federation.engine=per_user"),
        (["privacy=user"], "privacy.mode=user"),
        (["secure_aggregation=secaggplus"], "secure aggregation shows it only the round's sum"),
    ],
)
def test_defenses_are_refused_where_the_server_lacks_each_update(overrides, message):
    cfg = compose("simulate", ["defense=median", *overrides])
    with pytest.raises(ValueError, match=message):
        prepare_federation(cfg)
    prepare_federation(compose("simulate", ["defense=none", *overrides]))  # the mean still works
