"""Two simulation workers writing to one per-run device-state store at the same time: the
second waits for the first instead of failing with ``database is locked``, and no row is lost.

Real processes (forked, as Ray's workers are separate processes) on a real SQLite file.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import numpy as np

from fedrec.nodes.state_store import DeviceStateStore
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger
from fedrec.training.state import DeviceState

WRITES_PER_WORKER = 120
USERS_PER_WRITE = 4


def _state(server_round: int, value: float) -> DeviceState:
    entries = [LedgerEntry(r, 1.0, 0.1, 10, 0.1 * r) for r in range(1, server_round + 1)]
    embedding = {"user_embedding.weight": np.full((1, 16), value, np.float32)}
    return DeviceState(embedding, PrivacyLedger("rdp", 1e-5, entries), server_round)


def _worker(path: str, worker: int, start, errors) -> None:
    """Open the store per write, as a node does per message; users are disjoint per worker."""
    start.wait()
    try:
        for write in range(WRITES_PER_WORKER):
            users = [(worker * WRITES_PER_WORKER + write) * USERS_PER_WRITE + k for k in range(4)]
            with DeviceStateStore(path, timeout_s=30) as store:
                store.load(users[0], 1, request=None)
                store.save_many(1, {u: _state(1, u) for u in users}, request=None)
    except BaseException as err:  # reported to the parent, which fails the test
        errors.put(f"worker {worker}: {type(err).__name__}: {err}")


def test_two_processes_write_concurrently_without_errors_or_lost_rows(tmp_path):
    # A new file, opened by both at once: also the race on switching it to WAL mode.
    path = str(tmp_path / "device_states.sqlite")
    context = multiprocessing.get_context("fork")
    start, errors = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_worker, args=(path, w, start, errors)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    assert [process.exitcode for process in workers] == [0, 0]
    total = 2 * WRITES_PER_WORKER * USERS_PER_WRITE
    with DeviceStateStore(path) as store:
        ledgers = store.ledgers()
        assert set(ledgers) == set(range(total))
        for user in (0, total // 2, total - 1):
            state = store.load(user, 2, request=None)
            assert state.user_arrays["user_embedding.weight"][0, 0] == user
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM device_array").fetchone() == (total,)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_opening_waits_while_another_connection_converts_a_new_file(tmp_path):
    # The cause of the reported error: PRAGMA journal_mode=WAL answers "database is locked" at
    # once, without the busy handler, while another connection holds a lock on the file in its
    # rollback-journal mode (a second worker opening the same new store). The store must wait.
    path = tmp_path / "device_states.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE placeholder (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO placeholder VALUES (1)")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        with DeviceStateStore(path, timeout_s=10) as store:
            store.save(1, 1, _state(1, 1.0), request=None)
            waited_s = time.monotonic() - started
            assert store.ledger(1).epsilon == 0.1
    finally:
        release.join()
        holder.close()
    assert waited_s >= 0.25  # it waited for the lock rather than failing or skipping WAL
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
