"""The simulation's per-run device-state store: replays after a crash, and ledgers that never
go back (a real SQLite file)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.nodes.state_store import DeviceStateStore, LedgerRollback
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger
from fedrec.training.state import DeviceState


def _state(rounds: int) -> DeviceState:
    entries = [LedgerEntry(r, 1.0, 0.1, 10, 0.5 * r) for r in range(1, rounds + 1)]
    embedding = {"user_embedding.weight": np.full((1, 4), rounds, np.float32)}
    return DeviceState(embedding, PrivacyLedger("rdp", 1e-5, entries), rounds)


def test_a_replayed_round_starts_from_the_state_before_it(tmp_path):
    with DeviceStateStore(tmp_path / "s.sqlite") as store:
        assert store.load(7, 1, request="r1") == DeviceState()
        for server_round in (1, 2, 3):
            store.save(7, server_round, _state(server_round), request=f"r{server_round}")
        # The server resumes after round 2 and sends round 3's request again. A seeded device
        # replays it from its state after round 2: the same update again, charged once.
        seeded = store.load(7, 3, request="r3")
        assert seeded.rounds_trained == 2 and seeded.ledger.epsilon == 1.0
        assert seeded.user_arrays["user_embedding.weight"][0, 0] == 2
        # Anything else is a new release: fresh randomness, another table for the same round,
        # or a late message of an earlier round. The round-3 charge stays.
        for server_round, request in ((3, None), (3, "another table"), (2, "r2")):
            repeat = store.load(7, server_round, request=request)
            assert repeat.ledger.epsilon == 1.5, (server_round, request)
            assert repeat.user_arrays["user_embedding.weight"][0, 0] == server_round - 1
        # Evaluation after round 3 sees the newest state.
        assert store.load(7, 4, request=None).rounds_trained == 3
        assert {k: v.epsilon for k, v in store.ledgers().items()} == {7: 1.5}


def test_the_newest_ledger_is_the_last_written(tmp_path):
    with DeviceStateStore(tmp_path / "s.sqlite") as store:
        for server_round in (1, 2, 3):
            store.save(7, server_round, _state(server_round), request=None)
        # a late round-2 message trained on top of everything (a new release)
        late = _state(3)
        late.ledger.entries.append(LedgerEntry(2, 1.0, 0.1, 10, 2.0))
        store.save(7, 2, late, request=None)
        assert store.ledger(7).epsilon == 2.0 and store.ledgers()[7].epsilon == 2.0


def test_a_ledger_is_never_replaced_by_a_smaller_one(tmp_path):
    with DeviceStateStore(tmp_path / "s.sqlite") as store:
        store.save_many(3, {1: _state(3), 2: _state(3)}, request=None)
        with pytest.raises(LedgerRollback, match="user 2"):
            store.save_many(4, {1: _state(4), 2: _state(1)}, request=None)
        # all or nothing: user 1's round 4 was not written either
        assert store.load(1, 5, request=None).rounds_trained == 3
        assert store.ledger(2).epsilon == 1.5
