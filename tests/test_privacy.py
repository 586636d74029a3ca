"""The privacy ledger and budgets on a real Opacus engine and real ML-100K users."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ML100K_SHAPED_SPEC
from flwr.app import RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant

from fedrec.data import load_split
from fedrec.data.user_logs import user_row_groups
from fedrec.flower.records import ContextKeeper
from fedrec.model import MatrixFactorization, ModelSpec
from fedrec.privacy import PrivacySpec, epsilon_spent
from fedrec.privacy.ledger import PrivacyBudgetExhausted, PrivacyLedger
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.opacus_round import train_round
from fedrec.training.state import DeviceState, LocalData


@pytest.fixture(scope="module")
def shaped_users():
    split = load_split(ML100K_SHAPED_SPEC)
    groups = user_row_groups(split.train)
    return split.train.num_items, [split.train.items[groups[u]] for u in range(5)]


def rounds_of(items, num_items, privacy, count, batch_size=32, state=None, first_round=1):
    """Train ``count`` rounds on one device (continuing from ``state``); (state, results)."""
    item_arrays = MatrixFactorization(1, num_items, 8).item_state()
    state, results = state or DeviceState(), []
    for server_round in range(first_round, first_round + count):
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
def test_ledger_epsilon_equals_a_fresh_opacus_accountant(shaped_users, accountant, reference):
    num_items, users = shaped_users
    privacy = PrivacySpec(mode="record", noise_multiplier=1.1, accountant=accountant)
    state, results = rounds_of(users[0], num_items, privacy, 3)
    ledger = state.ledger
    assert [e.server_round for e in ledger.entries] == [1, 2, 3]
    fresh = reference()
    fresh.history = ledger.history()
    assert ledger.epsilon == pytest.approx(fresh.get_epsilon(delta=privacy.delta), rel=1e-6)
    assert [r.epsilon for r in results] == [e.epsilon for e in ledger.entries]
    assert results[0].epsilon < results[1].epsilon < results[2].epsilon


def test_a_user_at_budget_stops_before_training(shaped_users):
    num_items, users = shaped_users
    spent = [r.epsilon for r in rounds_of(users[1], num_items, PrivacySpec(mode="record"), 2)[1]]
    budget = (spent[0] + spent[1]) / 2  # room for one round, not two
    privacy = PrivacySpec(mode="record", target_epsilon=budget)
    state, _ = rounds_of(users[1], num_items, privacy, 1)
    with pytest.raises(PrivacyBudgetExhausted, match="past the budget"):
        rounds_of(users[1], num_items, privacy, 1, state=state, first_round=2)
    assert len(state.ledger.entries) == 1 and state.ledger.epsilon <= budget


def test_changing_delta_mid_run_is_refused(shaped_users):
    num_items, users = shaped_users
    state, _ = rounds_of(users[2], num_items, PrivacySpec(mode="record"), 1)
    changed = PrivacySpec(mode="record", delta=1e-6)
    with pytest.raises(ValueError, match="privacy settings changed mid-run"):
        rounds_of(users[2], num_items, changed, 1, state=state, first_round=2)


def test_device_state_round_trips_through_flower_records(shaped_users):
    num_items, users = shaped_users
    state, _ = rounds_of(users[3], num_items, PrivacySpec(mode="record"), 2)
    keeper = ContextKeeper(RecordDict())
    keeper.save(2, {7: state, 9: DeviceState()}, request=None)
    loaded = keeper.load([7, 9, 11], 3, request=None)
    assert loaded[7].ledger == state.ledger and loaded[7].rounds_trained == 2
    for name, value in state.user_arrays.items():
        assert np.array_equal(loaded[7].user_arrays[name], value)
    assert loaded[9].ledger is None and loaded[11].ledger is None  # never trained


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


@pytest.mark.parametrize("log_size", [12, 40, 150])
@pytest.mark.parametrize("target", [1.0, 8.0])
def test_solved_noise_spends_close_to_but_not_over_the_target(log_size, target):
    items = np.arange(log_size)
    privacy = PrivacySpec(
        mode="record", target_epsilon=target, solve_noise_multiplier=True, planned_rounds=3
    )
    state, results = rounds_of(items, 200, privacy, 3, batch_size=16)
    assert [r.epsilon <= target for r in results] == [True, True, True]
    assert results[-1].epsilon >= 0.95 * target  # the budget is used, not wasted
    noise = {e.noise_multiplier for e in state.ledger.entries}
    assert len(noise) == 1 and noise.pop() > 0
    # A fourth round would exceed the budget, so the device refuses it.
    with pytest.raises(PrivacyBudgetExhausted):
        rounds_of(items, 200, privacy, 1, batch_size=16, state=state, first_round=4)


def test_smaller_logs_get_more_noise_for_the_same_budget():
    privacy = PrivacySpec(
        mode="record", target_epsilon=4.0, solve_noise_multiplier=True, planned_rounds=2
    )
    small = rounds_of(np.arange(10), 200, privacy, 1, batch_size=16)[0].ledger.entries[0]
    large = rounds_of(np.arange(160), 200, privacy, 1, batch_size=16)[0].ledger.entries[0]
    assert small.sample_rate > large.sample_rate
    assert small.noise_multiplier > large.noise_multiplier
    with pytest.raises(ValueError, match="needs privacy.target_epsilon"):
        PrivacySpec(mode="record", solve_noise_multiplier=True)


def test_the_server_plans_each_users_rounds_from_the_sampling_rate():
    from fedrec.config import compose
    from fedrec.jobs.simulate import prepare_federation

    cfg = compose(
        "simulate",
        [
            "privacy=budget",
            "federation.num_clients=40",
            "federation.clients_per_round=10",
            "federation.rounds=10",
        ],
    )
    _, _, plan = prepare_federation(cfg)
    assert plan.settings.privacy.planned_rounds == 3  # ceil(10 rounds x 10 / 40)
    assert plan.settings.privacy.solve_noise_multiplier and cfg.privacy.planned_rounds == 0
