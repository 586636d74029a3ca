"""The device's state between rounds, kept in Flower's per-node ``Context.state``."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedrec.client.trainer import DeviceState

USER_RECORD = "fedrec.user"
LEDGER_RECORD = "fedrec.ledger"


def load_device_state(records: RecordDict) -> DeviceState:
    user = records.get(USER_RECORD)
    ledger = records.get(LEDGER_RECORD)
    user_arrays = None if user is None else {k: v.numpy() for k, v in user.items()}
    history = []
    rounds = 0
    if ledger is not None:
        history = list(zip(ledger["noise"], ledger["rate"], ledger["steps"], strict=True))
        rounds = int(ledger["rounds_trained"])
    return DeviceState(user_arrays, [(float(n), float(q), int(s)) for n, q, s in history], rounds)


def store_device_state(records: RecordDict, state: DeviceState) -> None:
    if state.user_arrays is not None:
        records[USER_RECORD] = ArrayRecord({k: Array(v) for k, v in state.user_arrays.items()})
    records[LEDGER_RECORD] = ConfigRecord(
        {
            "noise": [float(n) for n, _, _ in state.privacy_history],
            "rate": [float(q) for _, q, _ in state.privacy_history],
            "steps": [int(s) for _, _, s in state.privacy_history],
            "rounds_trained": state.rounds_trained,
        }
    )
