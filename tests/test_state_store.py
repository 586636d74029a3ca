"""The simulation's per-run device-state store: replays after a crash, and ledgers that never
go back (a real SQLite file)."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.client.state_store import DeviceStateStore, LedgerRollback
from fedrec.client.trainer import DeviceState
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger


def _state(rounds: int) -> DeviceState:
    entries = [LedgerEntry(r, 1.0, 0.1, 10, 0.5 * r) for r in range(1, rounds + 1)]
    embedding = {"user_embedding.weight": np.full((1, 4), rounds, np.float32)}
    return DeviceState(embedding, PrivacyLedger("rdp", 1e-5, entries), rounds)


def test_a_replayed_round_starts_from_the_state_before_it(tmp_path):
    with DeviceStateStore(tmp_path / "s.sqlite") as store:
        assert store.load(7, 1, replay_identical=True) == DeviceState()
        for server_round in (1, 2, 3):
            store.save(7, server_round, _state(server_round))
        # The server resumes after round 2 and runs round 3 again. A seeded device replays it
        # from its state after round 2: the same update again, charged once.
        seeded = store.load(7, 3, replay_identical=True)
        assert seeded.rounds_trained == 2 and seeded.ledger.epsilon == 1.0
        assert seeded.user_arrays["user_embedding.weight"][0, 0] == 2
        # With fresh randomness the replay is a new release: the round-3 charge stays.
        fresh = store.load(7, 3, replay_identical=False)
        assert fresh.user_arrays["user_embedding.weight"][0, 0] == 2
        assert fresh.ledger.epsilon == 1.5
        # Evaluation after round 3 sees the newest state.
        assert store.load(7, 4, replay_identical=True).rounds_trained == 3
        assert {k: v.epsilon for k, v in store.ledgers().items()} == {7: 1.5}


def test_a_ledger_is_never_replaced_by_a_smaller_one(tmp_path):
    with DeviceStateStore(tmp_path / "s.sqlite") as store:
        store.save_many(3, {1: _state(3), 2: _state(3)})
        with pytest.raises(LedgerRollback, match="user 2"):
            store.save_many(4, {1: _state(4), 2: _state(1)})
        # all or nothing: user 1's round 4 was not written either
        assert store.load(1, 5, replay_identical=True).rounds_trained == 3
        assert store.ledger(2).epsilon == 1.5
