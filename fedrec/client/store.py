"""The device's local store: one SQLite file holding everything fedrec keeps about its user.

What lives here: the interaction log, the user embedding, the privacy ledger, the consent
history, a log of what was sent in each round, and the latest shared item table (not personal;
kept so recommendations work between rounds). Arrays are stored as raw bytes with dtype and
shape, never pickled.

Durability: the rollback journal (``journal_mode=DELETE``) with ``synchronous=FULL``; every write
runs in one transaction, so a crash mid-write rolls back to the last commit and loses nothing
committed. ``secure_delete=ON`` zeroes deleted content in the file, and :meth:`LocalStore.erase`
also rebuilds the file with ``VACUUM`` so erased data cannot be read back from it.

The file is identified by ``PRAGMA application_id`` and versioned by ``PRAGMA user_version``:
a file of another kind, another schema version, or a damaged one raises :class:`StoreError`
before anything is written to it.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.client.consent import ConsentEvent
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger

# ledger_entries' columns: the fields of PrivacyLedger.to_dict()'s entries
LEDGER_COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerEntry))

SCHEMA_VERSION = 1
APPLICATION_ID = 0x66647263  # "fdrc": marks the file as a fedrec store
USER_ARRAYS, ITEM_TABLE = "user", "item_table"

# No column default, CHECK or comment names a category or any user value: after an erase, the
# schema is all that is left in the file, and it must not look like data.
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE interactions (
    id INTEGER PRIMARY KEY, item INTEGER NOT NULL, rating REAL, timestamp REAL NOT NULL,
    category TEXT NOT NULL);
CREATE TABLE consent_events (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, categories TEXT NOT NULL,
    expires_at REAL);
CREATE TABLE arrays (
    kind TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL,
    data BLOB NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE ledger_entries (
    position INTEGER PRIMARY KEY, server_round INTEGER NOT NULL, noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL, steps INTEGER NOT NULL, epsilon REAL NOT NULL);
CREATE TABLE sent_rounds (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, server_round INTEGER NOT NULL,
    tensors TEXT NOT NULL, metrics TEXT NOT NULL, bytes_sent INTEGER NOT NULL,
    privacy_mode TEXT NOT NULL);
"""
_TABLES = {"meta", "interactions", "consent_events", "arrays", "ledger_entries", "sent_rounds"}


class StoreError(RuntimeError):
    """The file is not a usable fedrec store (damaged, another kind, another schema version)."""


@dataclass(frozen=True)
class Interaction:
    """One thing the user did with an item. ``timestamp`` in unix seconds."""

    id: int
    item: int
    rating: float | None
    timestamp: float
    category: str


@dataclass(frozen=True)
class SentTensor:
    """One array that left the device: its name, shape, dtype and payload size in bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int


@dataclass(frozen=True)
class SentRound:
    """Everything one training reply carried: the tensors and the scalar metrics."""

    at: float
    server_round: int
    tensors: tuple[SentTensor, ...]
    metrics: dict[str, float]
    bytes_sent: int  # tensor payload plus 8 bytes per metric
    privacy_mode: str  # the round's privacy.mode: none | record | user | both


def _encode(array: np.ndarray) -> tuple[str, str, bytes]:
    array = np.ascontiguousarray(array)
    return array.dtype.str, json.dumps(list(array.shape)), array.tobytes()


def _decode(dtype: str, shape: str, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()


class LocalStore:
    """One user's store. Open an existing file, or create one by passing ``num_items``.

    ``num_items`` is the size of the shared item catalog this app's item ids index; it is fixed
    when the store is created and every item id and item table is checked against it.
    """

    def __init__(self, path: str | Path, *, num_items: int | None = None) -> None:
        self.path = Path(path)
        existed = self.path.exists() and self.path.stat().st_size > 0
        if not existed and num_items is None:
            raise StoreError(f"{self.path}: no store there; pass num_items to create one")
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            if existed:
                self._check_file()
            self._db.execute("PRAGMA journal_mode=DELETE")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            if not existed:
                self._create(num_items)  # type: ignore[arg-type]
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise StoreError(f"{self.path}: not a readable SQLite store ({err})") from None
        except Exception:
            self._db.close()
            raise
        self.num_items = int(self._meta("num_items"))
        if num_items is not None and num_items != self.num_items:
            self._db.close()
            raise StoreError(
                f"{self.path}: the store's catalog has {self.num_items} items, not {num_items}"
            )

    # -- opening -------------------------------------------------------------------------------
    def _check_file(self) -> None:
        """Refuse damaged files, other kinds of database and other schema versions."""
        (application_id,) = self._db.execute("PRAGMA application_id").fetchone()
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if application_id != APPLICATION_ID:
            raise StoreError(f"{self.path}: a SQLite file, but not a fedrec store")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: store schema version {version}; this fedrec reads version "
                f"{SCHEMA_VERSION}"
            )
        (check,) = self._db.execute("PRAGMA quick_check").fetchone()
        if check != "ok":
            raise StoreError(f"{self.path}: the store is damaged ({check})")
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if not tables >= _TABLES:
            raise StoreError(f"{self.path}: tables missing: {sorted(_TABLES - tables)}")

    def _create(self, num_items: int) -> None:
        if int(num_items) < 1:
            raise ValueError(f"num_items={num_items}; expected >= 1")
        with self.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("num_items", str(int(num_items))),
                    ("device_key", str(secrets.randbits(62))),
                    ("rounds_trained", "0"),
                ],
            )
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All writes inside commit together or not at all (the write lock is taken first)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _meta(self, key: str, default: str | None = None) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            if default is None:
                raise StoreError(f"{self.path}: meta key '{key}' is missing")
            return default
        return row[0]

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- interactions --------------------------------------------------------------------------
    def add_interaction(
        self, item: int, category: str, rating: float | None, timestamp: float
    ) -> int:
        """Append one interaction (checked by the caller); returns its row id."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO interactions (item, rating, timestamp, category) VALUES (?, ?, ?, ?)",
                (int(item), None if rating is None else float(rating), float(timestamp), category),
            )
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def interactions(self) -> list[Interaction]:
        rows = self._db.execute(
            "SELECT id, item, rating, timestamp, category FROM interactions ORDER BY timestamp, id"
        )
        return [Interaction(*row) for row in rows]

    @property
    def device_key(self) -> int:
        """A random number drawn when the store was created: seeds this device's randomness.
        It never leaves the device."""
        return int(self._meta("device_key"))

    # -- consent -------------------------------------------------------------------------------
    def add_consent_event(self, event: ConsentEvent) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO consent_events (at, action, categories, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (event.at, event.action, json.dumps(list(event.categories)), event.expires_at),
            )

    def consent_events(self) -> list[ConsentEvent]:
        return self.read_consent_events(self._db)

    @staticmethod
    def read_consent_events(db: sqlite3.Connection) -> list[ConsentEvent]:
        rows = db.execute(
            "SELECT at, action, categories, expires_at FROM consent_events ORDER BY id"
        )
        return [ConsentEvent(at, action, tuple(json.loads(c)), exp) for at, action, c, exp in rows]

    # -- arrays: the user embedding and the latest item table ----------------------------------
    def arrays(self, kind: str) -> dict[str, np.ndarray] | None:
        rows = self._db.execute(
            "SELECT name, dtype, shape, data FROM arrays WHERE kind = ? ORDER BY name", (kind,)
        ).fetchall()
        return {name: _decode(d, s, data) for name, d, s, data in rows} if rows else None

    @staticmethod
    def write_arrays(db: sqlite3.Connection, kind: str, arrays: dict[str, np.ndarray]) -> None:
        db.execute("DELETE FROM arrays WHERE kind = ?", (kind,))
        db.executemany(
            "INSERT INTO arrays VALUES (?, ?, ?, ?, ?)",
            [(kind, name, *_encode(value)) for name, value in sorted(arrays.items())],
        )

    def put_item_table(self, arrays: dict[str, np.ndarray]) -> None:
        with self.transaction() as db:
            self.write_arrays(db, ITEM_TABLE, arrays)

    # -- the privacy ledger and the rounds -----------------------------------------------------
    def ledger(self) -> PrivacyLedger | None:
        accountant = self._meta("ledger.accountant", "")
        if not accountant:
            return None
        columns = ", ".join(LEDGER_COLUMNS)
        rows = self._db.execute(f"SELECT {columns} FROM ledger_entries ORDER BY position")
        return PrivacyLedger.from_dict(  # the one ledger codec, one table row per entry
            {
                "accountant": accountant,
                "delta": float(self._meta("ledger.delta")),
                "entries": [dict(zip(LEDGER_COLUMNS, row, strict=True)) for row in rows],
            }
        )

    @property
    def rounds_trained(self) -> int:
        return int(self._meta("rounds_trained"))

    def sent_rounds(self) -> list[SentRound]:
        rows = self._db.execute(
            "SELECT at, server_round, tensors, metrics, bytes_sent, privacy_mode FROM sent_rounds "
            "ORDER BY id"
        )
        return [
            SentRound(
                at,
                server_round,
                tuple(
                    SentTensor(t["name"], tuple(t["shape"]), t["dtype"], t["bytes"])
                    for t in json.loads(tensors)
                ),
                json.loads(metrics),
                bytes_sent,
                privacy_mode,
            )
            for at, server_round, tensors, metrics, bytes_sent, privacy_mode in rows
        ]

    def save_round(
        self,
        db: sqlite3.Connection,
        *,
        user_arrays: dict[str, np.ndarray],
        ledger: PrivacyLedger | None,
        rounds_trained: int,
        sent: SentRound,
    ) -> None:
        """Write a trained round's state and sent log; call inside :meth:`transaction`."""
        self.write_arrays(db, USER_ARRAYS, user_arrays)
        if ledger is not None:
            encoded = ledger.to_dict()
            self._set_meta(db, "ledger.accountant", encoded["accountant"])
            self._set_meta(db, "ledger.delta", repr(float(encoded["delta"])))
            db.execute("DELETE FROM ledger_entries")
            db.executemany(
                f"INSERT INTO ledger_entries ({', '.join(LEDGER_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(LEDGER_COLUMNS))})",
                [tuple(entry[c] for c in LEDGER_COLUMNS) for entry in encoded["entries"]],
            )
        self._set_meta(db, "rounds_trained", str(int(rounds_trained)))
        db.execute(
            "INSERT INTO sent_rounds (at, server_round, tensors, metrics, bytes_sent, "
            "privacy_mode) VALUES (?, ?, ?, ?, ?, ?)",
            (
                sent.at,
                sent.server_round,
                json.dumps([t.__dict__ | {"shape": list(t.shape)} for t in sent.tensors]),
                json.dumps(sent.metrics),
                sent.bytes_sent,
                sent.privacy_mode,
            ),
        )

    # -- erasure -------------------------------------------------------------------------------
    def erase(self) -> dict[str, int]:
        """Erase everything about the user; returns how many rows of each kind were removed.

        ``secure_delete`` overwrites the deleted content with zeros, and ``VACUUM`` then
        rebuilds the file from the remaining rows only (no free pages, no stale copies). The
        rollback journal, which briefly holds the old pages, is deleted at each commit. Kept:
        the schema, the catalog size and the shared item table (not personal). The device key
        is redrawn, so seeds after an erase do not repeat those before it.
        """
        removed: dict[str, int] = {}
        with self.transaction() as db:
            for label, table, where in (
                ("interactions", "interactions", ""),
                ("consent_events", "consent_events", ""),
                ("user_embedding_arrays", "arrays", f" WHERE kind = '{USER_ARRAYS}'"),
                ("privacy_ledger_entries", "ledger_entries", ""),
                ("sent_rounds", "sent_rounds", ""),
            ):
                removed[label] = db.execute(f"DELETE FROM {table}{where}").rowcount
            db.execute("DELETE FROM meta WHERE key LIKE 'ledger.%'")
            self._set_meta(db, "rounds_trained", "0")
            self._set_meta(db, "device_key", str(secrets.randbits(62)))
        self._db.execute("VACUUM")
        return removed
