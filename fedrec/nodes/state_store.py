"""Device state that outlives the simulation's processes: one SQLite file per run, keyed by user.

Flower keeps a node's ``Context.state`` in memory; when the simulation process dies, every user's
embedding and privacy ledger die with it, and a resumed run would start each user's ε from zero
(an under-counted ε is a privacy bug). A simulated device therefore writes its state here,
before its reply leaves, one snapshot per (user, round it trained in). A deployed device has its
own store (:mod:`fedrec.client.store`) instead.

Why snapshots per round and not just the latest state: after a crash the server resumes from its
last checkpoint (round k) and runs round k+1 again, although some devices had already trained in
that round and charged their ledgers. A device asked for round k+1 again with the *same request*
(the same item table and settings, :func:`request_digest`) in a seeded run releases the identical
update again, which costs no further privacy and must not be charged twice: it replays round k+1
from its snapshot before k+1. Anything else that meets an existing snapshot of the same or a
later round (a different table, fresh randomness, a late message) is a new release: it starts
from the newest ledger, so every earlier charge stays and the new one is added.

The newest ledger is the last one written (a per-user write sequence), and a write that would
hold a lower ε than it is refused, so a user's recorded ε never goes down. Arrays are stored as
raw bytes with dtype and shape (never pickled); the ledger as JSON. The file runs in WAL mode
with a busy timeout, since the simulation's worker processes write to it concurrently; every
write is one transaction, begun ``IMMEDIATE`` so that it waits for the write lock up front
instead of failing when a read transaction cannot be upgraded.

Concurrent writers wait, they do not fail: SQLite's busy handler (the connection's timeout) does
not cover every lock. Switching a file into WAL mode (``PRAGMA journal_mode=WAL``) answers
``database is locked`` *at once*, without calling the handler, when another connection holds a
lock on the still rollback-journal file, which is exactly what happens when several workers
open a new run's store at the same moment (one is converting it while another asks). So the
switch is retried here until the same timeout, and skipped once the file is in WAL mode (the
mode is stored in the file).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.privacy.ledger import PrivacyLedger
from fedrec.training.state import DeviceState

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    user_key INTEGER NOT NULL, server_round INTEGER NOT NULL, seq INTEGER NOT NULL,
    rounds_trained INTEGER NOT NULL, request TEXT, ledger TEXT,
    PRIMARY KEY (user_key, server_round));
CREATE TABLE IF NOT EXISTS device_array (
    user_key INTEGER NOT NULL, server_round INTEGER NOT NULL, name TEXT NOT NULL,
    dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (user_key, server_round, name));
"""


class LedgerRollback(RuntimeError):
    """A write would leave a user with a lower ε than the store already records."""


def request_digest(arrays: dict[str, np.ndarray], config: dict[str, Any]) -> str:
    """A fingerprint of what the server asked for: the item arrays and the round's settings."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{value.dtype}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class DeviceStateStore:
    """The per-run store of simulated devices' states. Open one per message; cheap."""

    def __init__(self, path: str | Path, *, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        _enable_wal(self._db, timeout_s)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DeviceStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def load(self, user_key: int, server_round: int, *, request: str | None) -> DeviceState:
        """The state a device starts round ``server_round`` from (fresh if it never trained).

        ``request``: the :func:`request_digest` of this round's request in a seeded run, None
        when the device draws fresh randomness (then no repeat can be identical). For
        evaluation after a round, ask for ``server_round + 1`` with ``request=None``."""
        key, rnd = int(user_key), int(server_round)
        row = self._db.execute(
            "SELECT server_round, rounds_trained, ledger FROM device_state "
            "WHERE user_key = ? AND server_round < ? ORDER BY server_round DESC LIMIT 1",
            (key, rnd),
        ).fetchone()
        state = DeviceState()
        if row is not None:
            state = DeviceState(self._arrays(key, row[0]), _ledger(row[2]), int(row[1]))
        later = self._db.execute(
            "SELECT server_round, request FROM device_state "
            "WHERE user_key = ? AND server_round >= ?",
            (key, rnd),
        ).fetchall()
        identical_replay = request is not None and later == [(rnd, request)]
        if later and not identical_replay:
            state.ledger = self.ledger(key)  # a new release: every earlier charge stays
        return state

    def save(
        self, user_key: int, server_round: int, state: DeviceState, *, request: str | None
    ) -> None:
        """Record the state after ``server_round``; refuses to lower the user's stored ε."""
        self.save_many(server_round, {user_key: state}, request=request)

    def save_many(
        self, server_round: int, states: dict[int, DeviceState], *, request: str | None
    ) -> None:
        """Record several users' states after ``server_round`` in one transaction (a cohort
        node's round): all of them or, if anything fails, none."""
        rnd = int(server_round)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for user_key, state in states.items():
                key = int(user_key)
                stored = self.ledger(key)
                new_epsilon = state.ledger.epsilon if state.ledger else 0.0
                if stored is not None and new_epsilon < stored.epsilon - 1e-12:
                    raise LedgerRollback(
                        f"user {key}: round {rnd} would store ε={new_epsilon:.6g}, below the "
                        f"recorded {stored.epsilon:.6g}"
                    )
                ledger = json.dumps(state.ledger.to_dict()) if state.ledger else None
                self._db.execute(
                    "INSERT OR REPLACE INTO device_state VALUES (?, ?, (SELECT COALESCE(MAX(seq), "
                    "0) + 1 FROM device_state WHERE user_key = ?), ?, ?, ?)",
                    (key, rnd, key, int(state.rounds_trained), request, ledger),
                )
                self._db.execute(
                    "DELETE FROM device_array WHERE user_key = ? AND server_round = ?", (key, rnd)
                )
                self._db.executemany(
                    "INSERT INTO device_array VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (
                            key,
                            rnd,
                            name,
                            str(value.dtype),
                            json.dumps(list(value.shape)),
                            np.ascontiguousarray(value).tobytes(),
                        )
                        for name, value in (state.user_arrays or {}).items()
                    ],
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def ledger(self, user_key: int) -> PrivacyLedger | None:
        """The user's newest ledger (the last written; it holds the most spent), or None."""
        row = self._db.execute(
            "SELECT ledger FROM device_state WHERE user_key = ? AND ledger IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1",
            (int(user_key),),
        ).fetchone()
        return None if row is None else _ledger(row[0])

    def ledgers(self) -> dict[int, PrivacyLedger]:
        """Every user's newest ledger: what a report of ε per user reads."""
        rows = self._db.execute(
            "SELECT user_key, ledger, MAX(seq) FROM device_state "
            "WHERE ledger IS NOT NULL GROUP BY user_key"
        ).fetchall()
        return {int(key): _ledger(text) for key, text, _ in rows}

    def _arrays(self, user_key: int, server_round: int) -> dict[str, np.ndarray] | None:
        rows = self._db.execute(
            "SELECT name, dtype, shape, data FROM device_array "
            "WHERE user_key = ? AND server_round = ?",
            (int(user_key), int(server_round)),
        ).fetchall()
        if not rows:
            return None
        return {
            name: np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()
            for name, dtype, shape, data in rows
        }


def _enable_wal(db: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode, waiting up to ``timeout_s`` for other connections' locks.

    ``PRAGMA journal_mode=WAL`` fails immediately with ``database is locked`` (no busy handler)
    while another connection holds a lock on a rollback-journal file, e.g. a second worker
    converting the same new file; it may also leave the mode unchanged and report the old one.
    Both are retried with a short backoff. A file already in WAL mode needs no lock for this.
    """
    deadline = time.monotonic() + timeout_s
    delay_s = 0.001
    while True:
        try:
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode == "wal":
                return
            failure = f"journal_mode stayed '{mode}'"
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
            failure = str(err)
        if time.monotonic() >= deadline:
            raise sqlite3.OperationalError(
                f"could not switch the device-state store to WAL mode within {timeout_s} s: "
                f"{failure}"
            )
        time.sleep(delay_s)
        delay_s = min(2 * delay_s, 0.05)


def _ledger(text: str | None) -> PrivacyLedger | None:
    return None if text is None else PrivacyLedger.from_dict(json.loads(text))
