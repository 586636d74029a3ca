"""The server's tally of ε per user and of the users their budget stopped, across rounds and a
checkpoint (its federation-level behaviour is tested in test_federation.py)."""

from __future__ import annotations

import io
import json

import numpy as np

from fedrec.federation.checkpoint import ServerCheckpoint, load_checkpoint, save_checkpoint
from fedrec.federation.privacy_tally import PrivacyTally
from fedrec.federation.record import RoundRecord


def test_a_user_stopped_in_several_rounds_counts_once():
    tally = PrivacyTally()
    for server_round in (1, 2, 3):
        tally.report(7, 3.9, budget_exhausted=server_round > 1)
        tally.report(8, 1.0 * server_round)
        tally.report(101, 2.0)
        record = RoundRecord(server_round)
        tally.fill(record)
        assert record.users_at_budget == (0 if server_round == 1 else 1)
    assert (record.epsilon_min, record.epsilon_median, record.epsilon_max) == (2.0, 3.0, 3.9)
    assert record.clients_with_epsilon == 3


def test_a_checkpoint_keeps_every_user_keyed_by_population_index(tmp_path):
    """Users are keyed by their index in the population (fixed at discovery, the same after a
    resume), never by a Flower node id, which a new process draws anew."""
    tally = PrivacyTally()
    tally.report(7, 3.9, budget_exhausted=True)
    tally.report(101, 2.0)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, ServerCheckpoint(1, {}, privacy_tally=tally.to_json()))
    restored = PrivacyTally()
    restored.restore_json(load_checkpoint(path).privacy_tally)
    assert restored.epsilon_by_user == {7: 3.9, 101: 2.0}
    assert restored.at_budget == {7}


def test_a_checkpoint_written_before_the_tally_still_loads(tmp_path):
    state = {
        "server_round": 2,
        "python_random": None,
        "user_level": None,
        "epsilon_by_client": [["user", 7, 3.9], ["node", 101, 2.0]],
        "rows": [],
    }
    buffer = io.BytesIO()
    np.savez(buffer, __state__=np.frombuffer(json.dumps(state).encode(), np.uint8))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(buffer.getvalue())
    restored = PrivacyTally()
    restored.restore_json(load_checkpoint(path).privacy_tally)
    # node ids of an old process are dropped: a new process would count them twice
    assert restored.epsilon_by_user == {7: 3.9} and not restored.at_budget
