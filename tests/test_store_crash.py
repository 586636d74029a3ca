"""Stores killed mid-write, many times: nothing committed is lost and the file stays sound.

A forked child writes in a loop (each write one transaction: an interaction, or a round with its
ledger and sent-log) and reports each commit on a pipe; the parent SIGKILLs it at a random
moment, reopens the store, and checks that every reported row is there and that SQLite's
``PRAGMA integrity_check`` says ok. The same for the simulation's per-run device-state store.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time

import numpy as np

from fedrec.client.store import LocalStore, SentRound
from fedrec.nodes.state_store import DeviceStateStore
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger
from fedrec.training.state import DeviceState

KILLS = 20


def _ledger(rounds: int) -> PrivacyLedger:
    entries = [LedgerEntry(r, 1.0, 0.1, 10, 0.1 * r) for r in range(1, rounds + 1)]
    return PrivacyLedger("rdp", 1e-5, entries)


def _local_store_writer(path, first_round: int) -> None:
    with LocalStore(path) as store:
        server_round = first_round
        while True:
            row = store.add_interaction(7, "movies", 4.0, time.time())
            yield f"interaction {row}"
            server_round += 1
            with store.transaction() as db:
                store.save_round(
                    db,
                    user_arrays={"user_embedding.weight": np.full((1, 64), server_round, "f4")},
                    ledger=_ledger(server_round),
                    rounds_trained=server_round,
                    sent=SentRound(time.time(), server_round, (), {"epsilon": 0.1}, 8, "record"),
                )
            yield f"round {server_round}"


def _state_store_writer(path, first_round: int):
    with DeviceStateStore(path) as store:
        server_round = first_round
        while True:
            server_round += 1
            states = {
                user: DeviceState(
                    {"user_embedding.weight": np.full((1, 16), server_round, "f4")},
                    _ledger(server_round),
                    server_round,
                )
                for user in range(20)
            }
            store.save_many(server_round, states, request=None)
            yield f"round {server_round}"


def _kill_repeatedly(path, writer, committed_round) -> list[str]:
    """Run ``writer`` in a forked child, SIGKILL it at a random moment, ``KILLS`` times."""
    rng = random.Random(8)
    reported: list[str] = []
    for _ in range(KILLS):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: write until killed, never return into pytest
            try:
                os.close(read_end)
                for line in writer(path, committed_round(path)):
                    os.write(write_end, (line + "\n").encode())
            finally:
                os._exit(1)
        os.close(write_end)
        try:
            time.sleep(rng.uniform(0.02, 0.25))
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        with os.fdopen(read_end) as pipe:
            reported += pipe.read().splitlines()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert sum(line.startswith("round") for line in reported) > KILLS  # writes did happen
    return reported


def test_local_store_survives_sigkill_during_writes(tmp_path):
    path = tmp_path / "user.sqlite"
    LocalStore(path, num_items=100).close()

    def committed_round(p):
        with LocalStore(p) as store:
            return store.rounds_trained

    reported = _kill_repeatedly(path, _local_store_writer, committed_round)
    with LocalStore(path) as store:  # opening runs the store's own checks
        rows = {interaction.id for interaction in store.interactions()}
        ledger = store.ledger()
        sent = store.sent_rounds()
    reported_rows = [int(line.split()[1]) for line in reported if line.startswith("interaction")]
    reported_rounds = [int(line.split()[1]) for line in reported if line.startswith("round")]
    assert set(reported_rows) <= rows
    assert ledger is not None and len(ledger.entries) >= max(reported_rounds)
    assert [e.server_round for e in ledger.entries] == list(range(1, len(ledger.entries) + 1))
    assert {s.server_round for s in sent} >= set(reported_rounds)


def test_device_state_store_survives_sigkill_during_writes(tmp_path):
    path = tmp_path / "device_states.sqlite"
    DeviceStateStore(path).close()

    def committed_round(p):
        with DeviceStateStore(p) as store:
            ledger = store.ledger(0)
            return len(ledger.entries) if ledger else 0

    reported = _kill_repeatedly(path, _state_store_writer, committed_round)
    last = max(int(line.split()[1]) for line in reported)
    with DeviceStateStore(path) as store:
        ledgers = store.ledgers()
        assert set(ledgers) == set(range(20))  # a round's users commit together or not at all
        rounds = {len(ledger.entries) for ledger in ledgers.values()}
        assert len(rounds) == 1 and rounds.pop() >= last
        state = store.load(0, last + 1, request=None)
        assert state.user_arrays["user_embedding.weight"][0, 0] >= last
