"""The device's state between rounds, kept in Flower's per-node ``Context.state``."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.client.trainer import DeviceState
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger

USER_RECORD = "fedrec.user"
LEDGER_RECORD = "fedrec.ledger"
_COLUMNS = ("server_round", "noise_multiplier", "sample_rate", "steps", "epsilon")


def load_device_state(records: RecordDict) -> DeviceState:
    user = records.get(USER_RECORD)
    stored = records.get(LEDGER_RECORD)
    user_arrays = None if user is None else {k: v.numpy() for k, v in user.items()}
    ledger, rounds = None, 0
    if stored is not None:
        rounds = int(stored["rounds_trained"])
        if stored["accountant"]:
            columns = [stored[c] for c in _COLUMNS]
            ledger = PrivacyLedger(
                str(stored["accountant"]),
                float(stored["delta"]),
                [
                    LedgerEntry(int(r), float(n), float(q), int(s), float(e))
                    for r, n, q, s, e in zip(*columns, strict=True)
                ],
            )
    return DeviceState(user_arrays, ledger, rounds)


def store_device_state(records: RecordDict, state: DeviceState) -> None:
    if state.user_arrays is not None:
        records[USER_RECORD] = ArrayRecord({k: Array(v) for k, v in state.user_arrays.items()})
    ledger = state.ledger
    entries = ledger.entries if ledger else []
    records[LEDGER_RECORD] = ConfigRecord(
        {
            "rounds_trained": state.rounds_trained,
            "accountant": ledger.accountant if ledger else "",  # "": no DP round yet
            "delta": ledger.delta if ledger else 0.0,
            "server_round": [e.server_round for e in entries],
            "noise_multiplier": [e.noise_multiplier for e in entries],
            "sample_rate": [e.sample_rate for e in entries],
            "steps": [e.steps for e in entries],
            "epsilon": [e.epsilon for e in entries],
        }
    )
