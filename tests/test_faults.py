"""Dropouts and stragglers in a real Flower simulation: counted, skipped below the minimum, and
the privacy ledger charged exactly when a device trained (fail closed).

Which client misbehaves in which round is a pure function of the fault seed
(:func:`fedrec.jobs.faults.draw_fault`), so the expectations are computed from it, not copied
from a run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os

import numpy as np
import pytest

from fedrec.config import compose
from fedrec.flower.faults import Fault, FaultSpec, draw_fault
from fedrec.jobs.simulate import STATE_STORE_FILE, prepare_federation, run_simulate
from fedrec.nodes.state_store import DeviceStateStore
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY

CLIENTS, ROUNDS, MIN_REPLIES = 10, 3, 7
FAULTS = [
    "faults.dropout_rate=0.3",
    "faults.straggler_rate=0.1",
    "faults.seed=120",  # drawn so that round 1 has a straggler and a round falls below 7
]


class TableLog:
    """Client mod: log a hash of the item table each training message carries."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, msg, context, call_next):
        if msg.metadata.message_type == "train":
            digest = hashlib.sha256()
            for name, array in sorted(msg.content[ARRAYS_KEY].items()):
                digest.update(name.encode() + array.numpy().tobytes())
            line = json.dumps(
                {"round": int(msg.content[CONFIG_KEY]["server-round"]), "table": digest.hexdigest()}
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        return call_next(msg, context)


def test_fault_draws_are_seeded_and_validated():
    spec = FaultSpec(dropout_rate=0.3, straggler_rate=0.1, seed=5)
    draws = [draw_fault(spec, r, p) for r in range(1, 20) for p in range(50)]
    assert draws == [draw_fault(spec, r, p) for r in range(1, 20) for p in range(50)]
    share = sum(d is not None for d in draws) / len(draws)
    assert 0.33 < share < 0.47
    assert draw_fault(FaultSpec(), 1, 0) is None
    with pytest.raises(ValueError, match="dropout_rate"):
        FaultSpec(dropout_rate=1.5)
    with pytest.raises(ValueError, match="<= 1"):
        FaultSpec(dropout_rate=0.6, straggler_rate=0.6)
    with pytest.raises(ValueError, match="per_user"):
        prepare_federation(compose("simulate", ["federation.engine=cohort", *FAULTS]))


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("faulty")
    cfg = compose(
        "simulate",
        [
            "privacy=record",
            f"federation.num_clients={CLIENTS}",
            f"federation.clients_per_round={CLIENTS}",
            f"federation.rounds={ROUNDS}",
            "federation.local.epochs=1",
            "federation.eval_every_rounds=3",  # round 0 (warms the workers up) and the last
            # the round timeout the straggler exceeds; ample for every other reply on a loaded
            # machine (a round waits this long only when a straggler is drawn)
            "federation.timeout_s=60",
            f"federation.min_replies={MIN_REPLIES}",
            "federation.ray_cpus=2",
            *FAULTS,
        ],
    )
    tables = run_dir / "tables.jsonl"
    run_simulate(cfg, run_dir, client_mods=[TableLog(str(tables))])
    with open(run_dir / "metrics.csv") as handle:
        rows = {int(r["server_round"]): r for r in csv.DictReader(handle)}
    with open(tables) as handle:
        logged = [json.loads(line) for line in handle]
    return cfg, run_dir, rows, logged


def _expected(cfg):
    return {r: [draw_fault(cfg.faults, r, p) for p in range(CLIENTS)] for r in range(1, ROUNDS + 1)}


def test_failures_timeouts_and_skips_are_counted(faulty_run):
    cfg, run_dir, rows, logged = faulty_run
    expected = _expected(cfg)
    skipped_rounds = []
    for server_round, faults in expected.items():
        row = rows[server_round]
        dropped = sum(
            f in (Fault.DROPOUT_BEFORE_TRAINING, Fault.DROPOUT_AFTER_TRAINING) for f in faults
        )
        late = faults.count(Fault.STRAGGLER)
        healthy = faults.count(None)
        assert int(row["sampled"]) == CLIENTS
        assert (int(row["failed"]), int(row["timed_out"])) == (dropped, late), server_round
        assert int(row["accepted"]) == healthy
        assert int(row["skipped"]) == int(healthy < MIN_REPLIES)
        if healthy < MIN_REPLIES:
            skipped_rounds.append(server_round)
    assert skipped_rounds and expected[1].count(Fault.STRAGGLER) == 1  # the seed does its job
    # A skipped round leaves the model as it was: the next round sends the same table.
    table = {entry["round"]: entry["table"] for entry in logged}
    assert len({(e["round"], e["table"]) for e in logged}) == len(table)  # one table per round
    for server_round in skipped_rounds:
        if server_round < ROUNDS:
            assert table[server_round + 1] == table[server_round]
    assert table[2] != table[1]  # ... and an accepted round changes it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["faults"]["rounds_skipped"] == len(skipped_rounds)
    assert summary["faults"]["timed_out"] == 1


def test_ledgers_are_charged_exactly_when_a_device_trained(faulty_run):
    cfg, run_dir, _, _ = faulty_run
    _, source, _ = prepare_federation(cfg)
    with DeviceStateStore(run_dir / STATE_STORE_FILE) as store:
        ledgers = store.ledgers()
    for server_round, faults in _expected(cfg).items():
        for partition, fault in enumerate(faults):
            ledger = ledgers.get(int(source.users[partition]))
            charged = ledger is not None and server_round in {
                e.server_round for e in ledger.entries
            }
            # Trained (and so charged) unless it dropped before training: a device that vanished
            # after training, or replied too late, has paid although its update was lost.
            assert charged == (fault is not Fault.DROPOUT_BEFORE_TRAINING), (
                server_round,
                partition,
                fault,
            )
    for ledger in ledgers.values():
        epsilons = [e.epsilon for e in ledger.entries]
        assert epsilons == sorted(epsilons) and len(
            set(e.server_round for e in ledger.entries)
        ) == len(epsilons)
    assert np.isfinite([ledger.epsilon for ledger in ledgers.values()]).all()
