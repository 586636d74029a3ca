"""One contract, every registered local trainer (:data:`fedrec.training.trainers.TRAINERS`).

Each test below runs against each implementation, as ``implicit`` runs one test mixin over each
backend: a new trainer is registered, and this suite says whether it keeps the devices'
promises (the ledger charged before release, the budget enforced, clipping, weights, seeds) and
computes the reference's numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ML100K_SHAPED_SPEC

from fedrec.data import load_split
from fedrec.model.mf import random_item_arrays
from fedrec.model.spec import ModelSpec
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy.spec import PrivacySpec
from fedrec.privacy.user_level import update_norm
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.state import CohortMember, DeviceState, LocalData
from fedrec.training.trainers import TRAINERS

MODEL = ModelSpec(8, 0.1)
TRAINING = LocalTrainingSpec(epochs=1, lr=0.05, optimizer="adam", batch_size=16)
RECORD = PrivacySpec(mode="record", noise_multiplier=1.0, max_grad_norm=0.5)


@pytest.fixture(scope="module")
def users():
    split = load_split(ML100K_SHAPED_SPEC)
    source = SplitUserSource(split, np.arange(6))
    return split.train.num_items, [source.local_data({"partition-id": p}) for p in range(6)]


@pytest.fixture(scope="module")
def table(users):
    return random_item_arrays(users[0], MODEL.embedding_dim, init_std=0.1, seed=0)


def _round(trainer, table, users, privacy, *, states=None, weights=None, server_round=1):
    members = [
        CohortMember(key, data, (states or {}).get(key, DeviceState()), 1000 + key)
        for key, data in users
    ]
    return TRAINERS.get(trainer)(
        table,
        members,
        model_spec=MODEL,
        training=TRAINING,
        privacy=privacy,
        explicit=False,
        server_round=server_round,
        weights=weights,
        keep_updates=True,
    )


@pytest.fixture(params=TRAINERS.names())
def trainer(request) -> str:
    return request.param


def test_every_user_gets_an_outcome_and_an_update_of_the_sent_shapes(trainer, table, users):
    result = _round(trainer, table, users[1], PrivacySpec())
    assert [o.key for o in result.outcomes] == [key for key, _ in users[1]]
    assert all(o.status == "trained" for o in result.outcomes)
    for update in result.updates.values():
        assert {k: v.shape for k, v in update.items()} == {k: v.shape for k, v in table.items()}
        assert all(np.isfinite(v).all() for v in update.values())


def test_the_same_seed_gives_the_same_round(trainer, table, users):
    first = _round(trainer, table, users[1], RECORD)
    again = _round(trainer, table, users[1], RECORD)
    for key, update in first.updates.items():
        for name, value in update.items():
            np.testing.assert_array_equal(again.updates[key][name], value)


def test_the_ledger_is_charged_and_reported(trainer, table, users):
    result = _round(trainer, table, users[1], RECORD)
    for outcome in result.outcomes:
        ledger = outcome.state.ledger
        assert ledger is not None and len(ledger.entries) == 1
        assert outcome.epsilon == pytest.approx(ledger.epsilon) and outcome.epsilon > 0
        assert outcome.state.rounds_trained == 1


def test_a_spent_budget_trains_nothing_and_keeps_the_state(trainer, table, users):
    budget = PrivacySpec(
        mode="record", noise_multiplier=1.0, max_grad_norm=0.5, target_epsilon=1e-3
    )
    result = _round(trainer, table, users[1][:2], budget)
    assert [o.status for o in result.outcomes] == ["budget_exhausted"] * 2
    assert result.updates == {} and result.weight_sum == 0
    assert all(o.state.ledger is None or not o.state.ledger.entries for o in result.outcomes)


def test_a_user_without_data_fails_alone(trainer, table, users):
    empty = (99, LocalData(users[0], np.empty(0, dtype=np.int64)))
    result = _round(trainer, table, [empty, users[1][0]], PrivacySpec())
    assert [o.status for o in result.outcomes] == ["failed", "trained"]


def test_user_level_clips_every_released_update(trainer, table, users):
    clip = 0.05
    result = _round(trainer, table, users[1], PrivacySpec(mode="user", user_clip_norm=clip))
    for update in result.updates.values():
        assert update_norm(update) <= clip * (1 + 1e-5)


def test_the_sum_is_the_weighted_sum_of_the_updates(trainer, table, users):
    weights = [1.0, 2.0, 0.5, 3.0, 1.0, 4.0]
    result = _round(trainer, table, users[1], PrivacySpec(), weights=weights)
    assert result.weight_sum == pytest.approx(sum(weights))
    for name in table:
        expected = sum(
            w * result.updates[key][name] for w, (key, _) in zip(weights, users[1], strict=True)
        )
        np.testing.assert_allclose(result.update_sum[name], expected, rtol=1e-4, atol=1e-6)


def test_a_second_round_starts_from_the_kept_state(trainer, table, users):
    first = _round(trainer, table, users[1][:2], RECORD)
    states = {o.key: o.state for o in first.outcomes}
    second = _round(trainer, table, users[1][:2], RECORD, states=states, server_round=2)
    for outcome in second.outcomes:
        assert len(outcome.state.ledger.entries) == 2 and outcome.state.rounds_trained == 2
        assert outcome.epsilon > states[outcome.key].ledger.epsilon


def test_every_trainer_computes_the_reference_numbers(trainer, table, users):
    """Without noise the round is deterministic: each implementation must match Opacus'."""
    clipped = PrivacySpec(mode="record", noise_multiplier=0.0, max_grad_norm=0.5)
    reference = _round("opacus", table, users[1], clipped)
    result = _round(trainer, table, users[1], clipped)
    for key, update in reference.updates.items():
        for name, value in update.items():
            np.testing.assert_allclose(result.updates[key][name], value, rtol=1e-4, atol=1e-6)
    for mine, theirs in zip(result.outcomes, reference.outcomes, strict=True):
        assert mine.epsilon == theirs.epsilon and mine.steps == theirs.steps
