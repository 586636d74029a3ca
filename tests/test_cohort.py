"""The cohort engine is the device's round, user by user: same seeds, same numbers as Opacus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.model.mf import MatrixFactorization, ModelSpec
from fedrec.privacy.dp_sgd import PrivacySpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.engine import train_cohort
from fedrec.training.opacus_round import train_round
from fedrec.training.state import CohortMember, DeviceState, LocalData

SIZES = (1, 5, 31, 32, 33, 70)  # around the batch size: single, partial and exact batches


def _users(num_items: int, explicit: bool, seed: int = 0) -> list[LocalData]:
    rng = np.random.default_rng(seed)
    users = []
    for size in SIZES:
        items = rng.integers(0, num_items, size)
        ratings = rng.integers(1, 6, size).astype(np.float32) if explicit else None
        users.append(LocalData(num_items=num_items, train_items=items, train_ratings=ratings))
    return users


def _items(num_items: int, dim: int, explicit: bool) -> dict[str, np.ndarray]:
    model = MatrixFactorization(
        1,
        num_items,
        dim,
        explicit=explicit,
        global_mean=3.5,
        generator=torch.Generator().manual_seed(7),
    )
    return model.item_state()


def _compare(items, users, training, privacy, explicit, rounds=2, chunk_size=4):
    """Run ``rounds`` rounds both ways from the same states; compare every user's outputs."""
    spec = ModelSpec(embedding_dim=8, init_std=0.1)
    states = {key: DeviceState() for key in range(len(users))}
    cohort_states = dict(states)
    for server_round in range(1, rounds + 1):
        seeds = {key: 1000 * server_round + key for key in states}
        members = [
            CohortMember(key, data, cohort_states[key], seeds[key])
            for key, data in enumerate(users)
        ]
        fast = train_cohort(
            items,
            members,
            model_spec=spec,
            training=training,
            privacy=privacy,
            explicit=explicit,
            server_round=server_round,
            chunk_size=chunk_size,
            keep_updates=True,
        )
        assert [o.status for o in fast.outcomes] == ["trained"] * len(users)
        total = {name: np.zeros_like(a) for name, a in items.items()}
        for key, data in enumerate(users):
            slow = train_round(
                items,
                data,
                states[key],
                model_spec=spec,
                training=training,
                privacy=privacy,
                explicit=explicit,
                seed=seeds[key],
                server_round=server_round,
            )
            outcome = fast.outcomes[key]
            for name, array in slow.item_update.items():
                np.testing.assert_allclose(
                    fast.updates[key][name],
                    array,
                    rtol=1e-4,
                    atol=2e-6,
                    err_msg=f"user {key} (n={len(data.train_items)}), {name}, round {server_round}",
                )
                total[name] += array
            for name, array in slow.state.user_arrays.items():
                np.testing.assert_allclose(
                    outcome.state.user_arrays[name], array, rtol=1e-4, atol=2e-6
                )
            assert outcome.steps == slow.steps
            assert outcome.loss == pytest.approx(slow.loss, rel=1e-4, abs=1e-6)
            assert outcome.epsilon == pytest.approx(slow.epsilon, rel=1e-9)
            states[key] = slow.state
            cohort_states[key] = outcome.state
        for name, array in total.items():
            np.testing.assert_allclose(fast.update_sum[name], array, rtol=1e-4, atol=1e-5)
        assert fast.weight_sum == len(users)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("explicit", [False, True])
def test_dp_rounds_equal_the_opacus_device_round(optimizer: str, explicit: bool) -> None:
    # 6 items: negatives repeat inside an example, so the clipping norm must sum shared rows.
    num_items = 6 if not explicit else 12
    training = LocalTrainingSpec(
        epochs=2, batch_size=32, lr=0.05, optimizer=optimizer, l2=0.01, num_negatives=3
    )
    privacy = PrivacySpec(mode="record", noise_multiplier=0.7, max_grad_norm=0.3)
    _compare(
        _items(num_items, 8, explicit), _users(num_items, explicit), training, privacy, explicit
    )


def test_the_one_release_popularity_round_equals_the_opacus_device_round() -> None:
    # Positives only, one full-batch step (sampling rate 1): the popularity recipe's round.
    training = LocalTrainingSpec(epochs=1, batch_size=5000, lr=1.0, num_negatives=0)
    privacy = PrivacySpec(mode="record", noise_multiplier=2.0, max_grad_norm=0.5)
    _compare(_items(40, 8, False), _users(40, False), training, privacy, False, rounds=1)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_non_private_rounds_equal_the_device_round(optimizer: str) -> None:
    training = LocalTrainingSpec(
        epochs=2, batch_size=32, lr=0.05, optimizer=optimizer, l2=0.01, num_negatives=2
    )
    _compare(_items(40, 8, False), _users(40, False), training, PrivacySpec(), False)


def _federation(tmp_path, engine: str, extra: list[str]):
    from fedrec.config import compose
    from fedrec.jobs.simulate import run_simulate

    overrides = [
        "dataset=synthetic_ml100k",
        "federation.num_clients=15",  # 7 and 8 users on the two nodes
        "federation.clients_per_round=15",
        "federation.rounds=2",
        "federation.eval_every_rounds=1",
        "federation.local.epochs=1",
        "federation.local.optimizer=adam",
        "federation.local.lr=0.01",
        "federation.ray_cpus=2",
        "privacy=record",
        "privacy.noise_multiplier=0.8",
        f"federation.engine={engine}",
        "federation.cohort_nodes=2",
        "federation.cohort_chunk=5",
        *extra,
    ]
    run_dir = tmp_path / engine
    final = run_simulate(compose("simulate", overrides), run_dir)
    with np.load(run_dir / "item_table.npz") as table:
        return final, {name: table[name] for name in table.files}, run_dir


def test_cohort_federation_equals_the_per_user_federation(tmp_path) -> None:
    """A real Flower simulation both ways, every user in every round: the same final item
    table, the same per-user ε distribution, the same evaluation."""
    import csv

    slow, slow_table, slow_dir = _federation(tmp_path, "per_user", [])
    fast, fast_table, fast_dir = _federation(tmp_path, "cohort", [])
    for name, array in slow_table.items():
        np.testing.assert_allclose(fast_table[name], array, rtol=1e-4, atol=1e-6)
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, rel=1e-3, abs=1e-6), key
    rows = []
    for run_dir in (slow_dir, fast_dir):
        with open(run_dir / "metrics.csv") as handle:
            rows.append(list(csv.DictReader(handle)))
    for slow_row, fast_row in zip(*rows, strict=True):
        for column in ("sampled", "accepted", "rejected", "failed", "clients_with_epsilon"):
            assert fast_row[column] == slow_row[column], column
    assert float(rows[1][-1]["epsilon_max"]) > 0


def test_a_user_at_budget_sits_out_and_the_others_train() -> None:
    items, users = _items(40, 8, False), _users(40, False)[:3]
    spec = ModelSpec(embedding_dim=8)
    training = LocalTrainingSpec(epochs=1, batch_size=32, optimizer="sgd", num_negatives=2)
    privacy = PrivacySpec(mode="record", noise_multiplier=1.5, target_epsilon=8.0)
    members = [CohortMember(k, d, DeviceState(), k) for k, d in enumerate(users)]
    first = train_cohort(
        items,
        members,
        model_spec=spec,
        training=training,
        privacy=privacy,
        explicit=False,
        server_round=1,
    )
    # User 0 (one interaction: sampling rate 1) has spent the most; give them a budget just
    # above what they spent so that one more round would overspend it.
    spent = first.outcomes[0].epsilon
    tight = PrivacySpec(mode="record", noise_multiplier=1.5, target_epsilon=spent * 1.01)
    members = [CohortMember(o.key, users[o.key], o.state, 10 + o.key) for o in first.outcomes]
    second = train_cohort(
        items,
        members,
        model_spec=spec,
        training=training,
        privacy=tight,
        explicit=False,
        server_round=2,
    )
    statuses = {o.key: o.status for o in second.outcomes}
    assert statuses[0] == "budget_exhausted"
    assert second.outcomes[0].state is members[0].state  # nothing charged, nothing kept
    assert second.outcomes[0].epsilon == spent
    assert second.weight_sum == sum(s == "trained" for s in statuses.values())
    for outcome in second.outcomes:
        if outcome.status == "trained":
            assert outcome.epsilon <= tight.target_epsilon
            assert len(outcome.state.ledger.entries) == 2


def test_bad_requests_are_refused_with_a_reason() -> None:
    items, users = _items(40, 8, False), _users(40, False)[:2]
    members = [CohortMember(k, d, DeviceState(), k) for k, d in enumerate(users)]
    common = dict(model_spec=ModelSpec(embedding_dim=8), privacy=PrivacySpec(), explicit=False)
    with pytest.raises(ValueError, match="adagrad"):
        train_cohort(items, members, training=LocalTrainingSpec(optimizer="adagrad"), **common)
    with pytest.raises(ValueError, match="expected"):
        train_cohort(
            {"item_embedding.weight": items["item_embedding.weight"]},
            members,
            training=LocalTrainingSpec(),
            **common,
        )
    empty = LocalData(num_items=40, train_items=np.empty(0, dtype=np.int64))
    result = train_cohort(
        items,
        [*members, CohortMember(9, empty, DeviceState(), 9)],
        training=LocalTrainingSpec(),
        **common,
    )
    assert [o.status for o in result.outcomes] == ["trained", "trained", "failed"]
    assert "no training interactions" in result.outcomes[2].reason


@pytest.mark.parametrize(
    "privacy",
    [
        PrivacySpec(mode="record", noise_multiplier=0.9, max_grad_norm=0.5),
        PrivacySpec(mode="both", noise_multiplier=0.9, user_clip_norm=0.05),
        PrivacySpec(),
    ],
    ids=["record", "both", "none"],
)
def test_one_user_round_keeps_train_rounds_contract(privacy: PrivacySpec) -> None:
    from fedrec.privacy.user_level import update_norm
    from fedrec.training.trainers import train_one

    items, data = _items(40, 8, False), _users(40, False)[4]
    common = dict(
        model_spec=ModelSpec(embedding_dim=8),
        training=LocalTrainingSpec(epochs=2, batch_size=8, optimizer="adam", num_negatives=2),
        privacy=privacy,
        explicit=False,
        seed=3,
        server_round=1,
    )
    slow = train_round(items, data, DeviceState(), **common)
    fast = train_one("closed_form", items, data, DeviceState(), **common)
    for name, array in slow.item_update.items():
        np.testing.assert_allclose(fast.item_update[name], array, rtol=1e-4, atol=2e-6)
    assert (fast.steps, fast.sample_rate) == (slow.steps, slow.sample_rate)
    assert fast.epsilon == pytest.approx(slow.epsilon, rel=1e-9)
    if privacy.user_level:
        assert update_norm(fast.item_update) <= privacy.user_clip_norm


def test_one_user_round_at_budget_raises_like_the_device() -> None:
    from fedrec.privacy.ledger import PrivacyBudgetExhausted
    from fedrec.training.trainers import train_one

    items, data = _items(40, 8, False), _users(40, False)[0]
    privacy = PrivacySpec(mode="record", noise_multiplier=0.5, target_epsilon=1.0)
    with pytest.raises(PrivacyBudgetExhausted):
        train_one(
            "closed_form",
            items,
            data,
            DeviceState(),
            model_spec=ModelSpec(embedding_dim=8),
            training=LocalTrainingSpec(),
            privacy=privacy,
            explicit=False,
            seed=0,
        )
