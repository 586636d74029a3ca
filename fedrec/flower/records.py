"""A simulation node's users' states in Flower's per-node ``Context.state``.

The users' embeddings stack into one ArrayRecord (one row per user); each user's privacy ledger
travels in the one ledger codec every store uses (:meth:`PrivacyLedger.to_dict`, as JSON).
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.privacy.ledger import PrivacyLedger
from fedrec.training.state import DeviceState

USERS_RECORD, LEDGERS_RECORD = "fedrec.users", "fedrec.ledgers"


class ContextKeeper:
    """:class:`~fedrec.nodes.block.StateKeeper` over a node's ``Context.state``."""

    def __init__(self, records: RecordDict) -> None:
        self.records = records

    def load(self, keys, server_round, *, request):
        states = load_states(self.records)
        return {int(k): states.get(int(k), DeviceState()) for k in keys}

    def save(self, server_round, states, *, request):
        if states:
            store_states(self.records, load_states(self.records) | dict(states))


def load_states(records: RecordDict) -> dict[int, DeviceState]:
    """Every user of this node who trained so far: embedding, ledger, rounds trained."""
    users = records.get(USERS_RECORD)
    if users is None:
        return {}
    arrays = {name: array.numpy() for name, array in users.items()}
    keys, rounds = arrays.pop("keys"), arrays.pop("rounds_trained")
    ledgers = records.get(LEDGERS_RECORD) or {}
    states = {}
    for row, key in enumerate(keys.tolist()):
        text = ledgers.get(str(key))
        ledger = None if text is None else PrivacyLedger.from_dict(json.loads(str(text)))
        user_arrays = {name: values[row] for name, values in arrays.items()} or None
        states[int(key)] = DeviceState(user_arrays, ledger, int(rounds[row]))
    return states


def store_states(records: RecordDict, states: dict[int, DeviceState]) -> None:
    keys = sorted(states)
    with_arrays = [k for k in keys if states[k].user_arrays is not None]
    names = sorted(states[with_arrays[0]].user_arrays or {}) if with_arrays else []
    keys = with_arrays if names else keys
    users = {
        "keys": np.asarray(keys, dtype=np.int64),
        "rounds_trained": np.asarray([states[k].rounds_trained for k in keys], dtype=np.int64),
    }
    for name in names:
        users[name] = np.stack([states[k].user_arrays[name] for k in keys])  # type: ignore[index]
    records[USERS_RECORD] = ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in users.items()}
    )
    ledgers = {
        str(k): json.dumps(states[k].ledger.to_dict())  # type: ignore[union-attr]
        for k in keys
        if states[k].ledger is not None
    }
    records[LEDGERS_RECORD] = ConfigRecord(ledgers)
