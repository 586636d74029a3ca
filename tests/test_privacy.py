"""The privacy ledger and budgets on a real Opacus engine and real ML-100K users."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant

from fedrec.client.device_state import load_device_state, store_device_state
from fedrec.client.trainer import DeviceState, LocalData, LocalTrainingSpec, train_round
from fedrec.data import DatasetSpec, load_split
from fedrec.data.user_logs import user_row_groups
from fedrec.model import MatrixFactorization, ModelSpec
from fedrec.privacy import PrivacySpec, epsilon_spent
from fedrec.privacy.ledger import PrivacyBudgetExhausted, PrivacyLedger


@pytest.fixture(scope="module")
def ml100k_users():
    split = load_split(DatasetSpec(name="movielens_100k"))
    groups = user_row_groups(split.train)
    return split.train.num_items, [split.train.items[groups[u]] for u in range(5)]


def rounds_of(items, num_items, privacy, count, batch_size=32):
    item_arrays = MatrixFactorization(1, num_items, 8).item_state()
    state, results = DeviceState(), []
    for server_round in range(1, count + 1):
        result = train_round(
            item_arrays,
            LocalData(num_items, items),
            state,
            model_spec=ModelSpec(8),
            training=LocalTrainingSpec(batch_size=batch_size),
            privacy=privacy,
            explicit=False,
            seed=server_round,
            server_round=server_round,
        )
        state = result.state
        results.append(result)
    return state, results


@pytest.mark.parametrize(
    ("accountant", "reference"), [("rdp", RDPAccountant), ("prv", PRVAccountant)]
)
def test_ledger_epsilon_equals_a_fresh_opacus_accountant(ml100k_users, accountant, reference):
    num_items, users = ml100k_users
    privacy = PrivacySpec(mode="record", noise_multiplier=1.1, accountant=accountant)
    state, results = rounds_of(users[0], num_items, privacy, 3)
    ledger = state.ledger
    assert [e.server_round for e in ledger.entries] == [1, 2, 3]
    fresh = reference()
    fresh.history = ledger.history()
    assert ledger.epsilon == pytest.approx(fresh.get_epsilon(delta=privacy.delta), rel=1e-6)
    assert [r.epsilon for r in results] == [e.epsilon for e in ledger.entries]
    assert results[0].epsilon < results[1].epsilon < results[2].epsilon


def test_a_user_at_budget_stops_before_training(ml100k_users):
    num_items, users = ml100k_users
    spent = [r.epsilon for r in rounds_of(users[1], num_items, PrivacySpec(mode="record"), 2)[1]]
    budget = (spent[0] + spent[1]) / 2  # room for one round, not two
    privacy = PrivacySpec(mode="record", target_epsilon=budget)
    state, _ = rounds_of(users[1], num_items, privacy, 1)
    with pytest.raises(PrivacyBudgetExhausted, match="past the budget"):
        train_round(
            MatrixFactorization(1, num_items, 8).item_state(),
            LocalData(num_items, users[1]),
            state,
            model_spec=ModelSpec(8),
            training=LocalTrainingSpec(batch_size=32),
            privacy=privacy,
            explicit=False,
            seed=0,
            server_round=2,
        )
    assert len(state.ledger.entries) == 1 and state.ledger.epsilon <= budget


def test_changing_delta_mid_run_is_refused(ml100k_users):
    num_items, users = ml100k_users
    state, _ = rounds_of(users[2], num_items, PrivacySpec(mode="record"), 1)
    with pytest.raises(ValueError, match="privacy settings changed mid-run"):
        train_round(
            MatrixFactorization(1, num_items, 8).item_state(),
            LocalData(num_items, users[2]),
            state,
            model_spec=ModelSpec(8),
            training=LocalTrainingSpec(),
            explicit=False,
            privacy=PrivacySpec(mode="record", delta=1e-6),
            seed=0,
        )


def test_device_state_round_trips_through_flower_records(ml100k_users):
    num_items, users = ml100k_users
    state, _ = rounds_of(users[3], num_items, PrivacySpec(mode="record"), 2)
    records = RecordDict()
    store_device_state(records, state)
    loaded = load_device_state(records)
    assert loaded.ledger == state.ledger and loaded.rounds_trained == 2
    for name, value in state.user_arrays.items():
        assert np.array_equal(loaded.user_arrays[name], value)
    empty = RecordDict()
    store_device_state(empty, DeviceState())
    assert load_device_state(empty).ledger is None


def test_tiny_logs_take_noise_only_steps_and_are_charged_for_them():
    # Two interactions, batch 1: Poisson sampling often draws nobody, and each such step must
    # still be taken (and counted), or epsilon would be under-reported.
    items = np.array([3, 7])
    _, results = rounds_of(items, 20, PrivacySpec(mode="record"), 1, batch_size=1)
    assert results[0].steps == 2 and results[0].sample_rate == 0.5
    assert results[0].epsilon == pytest.approx(
        epsilon_spent([(1.0, 0.5, 2)], delta=1e-5), rel=1e-12
    )


def test_ledger_json_round_trip_and_no_noise_means_no_guarantee():
    ledger = PrivacyLedger("rdp", 1e-5)
    ledger.charge(1, 1.0, 0.1, 10)
    assert PrivacyLedger.from_dict(ledger.to_dict()) == ledger
    assert epsilon_spent([(0.0, 0.1, 10)], delta=1e-5) == float("inf")
    with pytest.raises(ValueError, match="delta"):
        epsilon_spent([(1.0, 0.1, 10)], delta=0)
