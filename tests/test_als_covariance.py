"""Federated (DP-)ALS's covariance start: the popularity and item-covariance releases.

Real contributions of real (synthetic ML-100K-shaped) users are checked against the sensitivity
the noise is calibrated to; the accountant's ε against a fresh Opacus accountant; the noise
against its stated scale; bad releases are refused and counted; and the engines (a real Flower
simulation and the in-process federation) give the table an independent computation of the
covariance's eigenvectors gives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from als_helpers import (
    TWELVE_USER_ALS,
    ReplyAudit,
    run_in_process,
    split_members,
    trained_reply,
    training_rows,
)
from opacus.accountants import PRVAccountant, RDPAccountant

from fedrec.config import compose
from fedrec.config.algorithm import AlgorithmSpec
from fedrec.data import load_split
from fedrec.eval.evaluate import per_user_items
from fedrec.federation.als_checks import start_release_rejection
from fedrec.federation.als_rule import AlsRule, AlsServerPlan, spectral_edge, symmetric_noise
from fedrec.federation.record import RoundRecord
from fedrec.jobs.simulate import choose_users, run_simulate
from fedrec.jobs.tune import run_als_in_process
from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING
from fedrec.privacy import PrivacySpec
from fedrec.privacy.als import AlsPrivacyPlan, plan_dp_als
from fedrec.protocol.settings import AlsSpec
from fedrec.training.als.covariance import (
    COVARIANCE,
    CROSS,
    MIN_RESIDUAL,
    WEIGHT,
    covariance_of,
    deflated_sum,
    direction_of,
    items_from_covariance,
    popularity_table,
)
from fedrec.training.als.statistics import COUNTS, ITEMS
from fedrec.training.als.trainer import als_round

SMALL = [
    *TWELVE_USER_ALS,
    "algorithm.covariance_start=true",
    "algorithm.frequent_fraction=0.1",
    "model.embedding_dim=4",
]


def _table(split, dim: int, trained: np.ndarray | None = None) -> dict[str, np.ndarray]:
    rows = np.random.default_rng(0).normal(0, 0.3, (split.train.num_items, dim))
    if trained is not None:
        rows[~trained] = 0.0
    return {ITEM_EMBEDDING: rows, ITEM_BIAS: np.zeros((split.train.num_items, 1))}


def _trained(split, fraction: float = 0.1) -> np.ndarray:
    counts = np.bincount(split.train.items, minlength=split.train.num_items)
    mask = np.zeros(split.train.num_items, dtype=bool)
    mask[np.argsort(-counts, kind="stable")[: math.ceil(fraction * len(counts))]] = True
    return mask


def _start_table(split, dim: int, trained: np.ndarray) -> dict[str, np.ndarray]:
    """The table a popularity round sends: the trained items' popularity direction in column 0."""
    counts = np.bincount(split.train.items, minlength=split.train.num_items).astype(float)
    return {
        ITEM_EMBEDDING: popularity_table(counts, trained, dim).astype(np.float32),
        ITEM_BIAS: np.zeros((split.train.num_items, 1)),
    }


def _deflated_apart(items: np.ndarray, ids: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """One user's ``w y yᵀ`` over ``ids``, written from the definition: x their indicator over
    the trained items at norm 1, y = x − (x·d) d, w = 1 / max(‖y‖, ρ)²."""
    x = np.isin(ids, items).astype(np.float64)
    if not x.any():
        return np.zeros((len(ids), len(ids)))
    x /= np.linalg.norm(x)
    y = x - (x @ direction) * direction
    return np.outer(y, y) / max(np.linalg.norm(y), MIN_RESIDUAL) ** 2


def test_each_users_real_releases_have_the_unit_norm_the_noise_assumes(ml100k_shaped_split):
    split, members = ml100k_shaped_split, split_members(ml100k_shaped_split, 60)
    trained = _trained(split)
    catalogue = split.train.num_items
    table = _start_table(split, 8, trained)
    _, direction = direction_of(table[ITEM_EMBEDDING])
    ids = np.flatnonzero(trained)
    assert np.linalg.norm(direction) == pytest.approx(1.0) and (direction[ids] > 0).all()
    full = 0
    for release in ("popularity", "covariance"):
        spec = AlsSpec(reg=1.0, unobserved_weight=0.1, release=release)
        result = als_round(table, members, spec=spec, explicit=False, keep_updates=True)
        for member in members:
            arrays = result.updates[member.key]
            own = np.unique(member.data.train_items)
            if release == "popularity":
                assert set(arrays) == {ITEMS, COUNTS}
                np.testing.assert_array_equal(arrays[ITEMS], own)  # the whole log, not B items
                assert np.linalg.norm(arrays[COUNTS]) == pytest.approx(1.0, rel=1e-6)
            else:
                assert set(arrays) == {ITEMS, COVARIANCE, CROSS, WEIGHT}
                np.testing.assert_array_equal(arrays[ITEMS], own[trained[own]])
                rebuilt = deflated_sum([arrays], ids, direction[ids])
                np.testing.assert_allclose(
                    rebuilt, _deflated_apart(own, ids, direction[ids]), atol=1e-5
                )
                # the sensitivity the noise is calibrated to: Frobenius norm (= trace) ≤ 1,
                # exactly 1 unless the user's items lie almost along d
                values = np.linalg.eigvalsh(rebuilt)
                assert values.min() > -1e-5 and values.sum() <= 1 + 1e-5
                assert np.linalg.norm(rebuilt) <= 1 + 1e-5
                full += np.linalg.norm(rebuilt) > 1 - 1e-4  # the whole unit norm spent
                assert abs(rebuilt @ direction[ids]).max() < 1e-4  # nothing left along d
            assert (
                start_release_rejection(
                    arrays,
                    release=release,
                    num_items=catalogue,
                    users=1,
                    trained=trained,
                    direction=direction,
                )
                is None
            )
        # a node's block sums its users' releases, over the union of their items
        total = result.update_sum
        if release == "popularity":
            dense = np.zeros(catalogue)
            for member in members:
                dense[result.updates[member.key][ITEMS]] += result.updates[member.key][COUNTS]
            np.testing.assert_allclose(total[COUNTS], dense[total[ITEMS]], rtol=1e-5)
        else:
            apart = sum(deflated_sum([result.updates[m.key]], ids, direction[ids]) for m in members)
            np.testing.assert_allclose(deflated_sum([total], ids, direction[ids]), apart, atol=1e-4)
        assert len(total[ITEMS]) > 10
    assert full >= 0.8 * len(members)


def test_a_user_along_the_popularity_direction_sends_no_more_than_norm_one():
    """The edge cases of the deflation's scale 1/max(‖y‖, ρ)²: a user whose items are exactly
    d's support with d uniform (y = 0, nothing sent), one whose residual is inside ρ (scaled by
    1/ρ² only: norm ‖y‖²/ρ² < 1) and one outside it (norm 1)."""
    catalogue, dim = 12, 3
    trained = np.zeros(catalogue, dtype=bool)
    trained[:6] = True
    uniform = popularity_table(np.ones(catalogue), trained, dim)
    ids = np.arange(6)
    skewed = popularity_table(np.array([10.0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]), trained, dim)
    d = np.array([10.0, 1, 1, 1, 1, 1]) / math.sqrt(105)
    inside = 1 - d[0] ** 2  # item 0 alone: ‖y‖² = 1 − d₀² ≈ 0.05 < ρ²
    for table, items, norm in (
        (uniform, np.arange(6), 0.0),
        (skewed, np.array([0]), inside / MIN_RESIDUAL**2),
        (skewed, np.array([1, 5]), 1.0),
    ):
        arrays = covariance_of([items], table)
        _, direction = direction_of(table)
        rebuilt = deflated_sum([arrays], ids, direction[ids])
        assert np.linalg.norm(rebuilt) == pytest.approx(norm, abs=1e-6)
        np.testing.assert_allclose(rebuilt, _deflated_apart(items, ids, direction[ids]), atol=1e-6)
        assert (
            start_release_rejection(
                arrays,
                release="covariance",
                num_items=catalogue,
                users=1,
                trained=trained,
                direction=direction,
            )
            is None
        )


def test_bad_releases_are_refused_and_counted(ml100k_shaped_split):
    split = ml100k_shaped_split
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, release="covariance")
    trained = _trained(split)
    table = _start_table(split, 8, trained)
    _, direction = direction_of(table[ITEM_EMBEDDING])
    result = als_round(table, split_members(split, 6), spec=spec, explicit=False, keep_updates=True)
    good = result.updates[0]
    cov = good[COVARIANCE].astype(np.float64)
    nan = cov.copy()
    nan[0, 0] = np.nan
    skew = cov.copy()
    skew[0, 1] += 0.5
    untrained = np.flatnonzero(~trained)[:1]
    crafted = {
        "NaN": {**good, COVARIANCE: nan},
        "wrong shape": {**good, COVARIANCE: cov[:, :-1]},
        "a cross of the wrong shape": {**good, CROSS: good[CROSS][:-1]},
        "not symmetric": {**good, COVARIANCE: skew},
        "not PSD": {**good, COVARIANCE: cov - 0.5 * np.eye(len(cov)) + 0.5 * np.diag(np.diag(cov))},
        "a cross that breaks PSD": {**good, CROSS: good[CROSS] * 5},
        "a negative weight": {**good, WEIGHT: -good[WEIGHT]},
        "over one user's norm": {**good, COVARIANCE: cov * 3},
        "an untrained item": {
            **good,
            ITEMS: np.sort(np.concatenate([good[ITEMS][:-1], untrained])),
        },
        "popularity names in a covariance round": {ITEMS: good[ITEMS], COUNTS: np.ones(2)},
    }
    for name, arrays in crafted.items():
        reason = start_release_rejection(
            arrays,
            release="covariance",
            num_items=len(trained),
            users=1,
            trained=trained,
            direction=direction,
        )
        assert reason is not None, name
    popularity = {ITEMS: np.array([1, 5]), COUNTS: np.array([0.9, 0.9])}  # norm 1.27 > 1
    assert "unit-norm" in start_release_rejection(
        popularity, release="popularity", num_items=len(trained), users=1, trained=None
    )

    # the rule in its covariance round refuses them, counts them, and still releases a table
    plan = AlsServerPlan(spec, frequent_fraction=0.1, covariance_start=True)
    rule = AlsRule(plan, rounds=2, min_replies=1, seed=0)
    rule.step.counts = np.bincount(split.train.items, minlength=len(trained)).astype(float)
    assert rule.round_config(2, {})["als.release"] == "covariance"
    replies = [trained_reply(k, result.updates[k]) for k in range(1, 6)]
    replies += [trained_reply(100 + i, arrays) for i, arrays in enumerate(crafted.values())]
    record = RoundRecord(server_round=2, sampled=len(replies))
    updated = rule.apply(2, table, replies, record)
    assert record.rejected == len(crafted) and record.accepted == 5
    assert updated is not None and np.isfinite(updated[ITEM_EMBEDDING]).all()
    assert rule.round_config(3, {})["als.release"] == "factors"
    # the phase survives a checkpoint
    restored = AlsRule(plan, rounds=3, min_replies=1, seed=0)
    restored.step.restore(rule.step.state())
    assert restored.round_config(3, {})["als.release"] == "factors"


def _start_plan(**settings) -> AlsPrivacyPlan:
    """A covariance start's privacy plan over its two releases (clip 1, δ 1e-5, no item Grams)."""
    return plan_dp_als(
        **{"clip_norm": 1.0, "delta": 1e-5, "rounds": 2, "item_grams": False} | settings,
        covariance_start=True,
    )


def _covariance_start_in_process(split, privacy: PrivacySpec, rounds: int, **settings):
    """A covariance start (10 % frequent items, B 20) in process on the first 80 users: the
    server's round records and its privacy plan."""
    algorithm = AlgorithmSpec(
        name="als",
        clip_norm=1.0,
        max_items=20,
        frequent_fraction=0.1,
        item_grams=False,
        covariance_start=True,
        **settings,
    )
    return run_in_process(split, algorithm, privacy, rounds, np.arange(80))


def test_covariance_start_epsilon_is_a_fresh_accountants(ml100k_shaped_split):
    privacy = PrivacySpec(mode="user", user_target_epsilon=4.0, delta=1e-5)
    records, private = _covariance_start_in_process(
        ml100k_shaped_split, privacy, 3, count_noise_scale=0.7
    )
    z = private.noise_multiplier
    fresh = RDPAccountant()
    steps = [
        [(0.7 * z,)],  # round 1: the popularity
        [(z,)],  # round 2: the covariance
        [(private.gram_noise_scale * z,), (z,)],  # round 3: G and the b_j
    ]
    for record, released in zip(records, steps, strict=True):
        for (multiplier,) in released:
            fresh.step(noise_multiplier=multiplier, sample_rate=1.0)
        assert record.user_level_epsilon == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    assert 3.5 < records[-1].user_level_epsilon <= 4.0 * (1 + 1e-6) + 0.01  # z solved for ε


def test_dp_als_honours_the_configured_accountant(ml100k_shaped_split):
    """privacy.accountant=prv: z is solved and ε reported by Opacus' PRV accountant, which
    follows the composed Gaussian's privacy curve, so the same ε needs less noise than RDP's."""
    privacy = PrivacySpec(mode="user", user_target_epsilon=1.0, delta=1e-5, accountant="prv")
    records, private = _covariance_start_in_process(ml100k_shaped_split, privacy, 2)
    z = private.noise_multiplier
    fresh = PRVAccountant()
    for record in records:  # round 1 the popularity, round 2 the covariance: both at z
        fresh.step(noise_multiplier=z, sample_rate=1.0)
        assert record.user_level_epsilon == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-6)
    assert 0.95 < records[-1].user_level_epsilon <= 1.0 * (1 + 1e-6) + 0.01
    rdp = _start_plan(max_items=20, target_epsilon=1.0)
    # the analytic Gaussian mechanism's σ for ε = 1, δ = 1e-5 is 3.73: z = 3.73·√2 = 5.28 for
    # two releases; RDP's conversion needs 5.75
    assert z < 0.95 * rdp.noise_multiplier and z == pytest.approx(5.28, rel=0.03)
    with pytest.raises(ValueError, match="accountant"):
        AlsPrivacyPlan(1.0, 20, 1.0, 1e-5, accountant="moments")


def test_the_start_releases_have_the_stated_noise():
    private = _start_plan(max_items=30, noise_multiplier=1.3, count_noise_scale=0.5)
    # sensitivity 1 for the whole log: no √B on the counts
    assert private.stds["counts"] == pytest.approx(0.5 * 1.3)
    assert private.stds["covariance"] == pytest.approx(1.3)
    noisy = symmetric_noise(
        np.zeros((400, 400)), private.stds["covariance"], np.random.default_rng(0)
    )
    np.testing.assert_array_equal(noisy, noisy.T)
    # the Gaussian mechanism on all m² entries (Frobenius sensitivity 1), symmetrised: z on the
    # diagonal, z/√2 off it
    assert np.diag(noisy).std() == pytest.approx(1.3, rel=0.1)
    assert noisy[np.triu_indices(400, 1)].std() == pytest.approx(1.3 / math.sqrt(2), rel=0.01)
    # the top eigenvalue of that noise sits at the spectral edge the server thresholds at
    assert np.linalg.eigvalsh(noisy)[-1] == pytest.approx(spectral_edge(1.3, 400), rel=0.05)
    with pytest.raises(ValueError, match="distributed"):
        AlsPrivacyPlan(1.0, 30, 1.3, 1e-5, noise_shares=4, item_grams=False, covariance_start=True)


def test_covariance_start_refusals(tmp_path):
    for overrides, phrase in (
        (["federation.rounds=1"], "rounds >= 2"),
        (["secure_aggregation=secaggplus", "algorithm.item_grams=false"], "covariance_start"),
        (["algorithm.name=mf"], "set name=als"),
    ):
        with pytest.raises(ValueError, match=phrase):
            run_simulate(compose("simulate", [*SMALL, *overrides]), tmp_path / "refused")
    with pytest.raises(ValueError, match="no distributed mode"):
        AlgorithmSpec(name="als", covariance_start=True, noise_shares=0.5)
    with pytest.raises(ValueError, match="als.release"):
        AlsSpec(release="everything")


def test_a_flower_simulation_releases_the_covariances_eigenvectors(tmp_path):
    audit = tmp_path / "replies"
    audit.mkdir()
    cfg = compose("simulate", SMALL)
    run_simulate(cfg, tmp_path / "run", client_mods=[ReplyAudit(audit)])
    names = {
        path.name.split("_")[0]: set(np.load(path).files) for path in sorted(audit.glob("*.npz"))
    }
    assert names == {
        "r1": {ITEMS, COUNTS},
        "r2": {ITEMS, COVARIANCE, CROSS, WEIGHT},
    }  # never a user factor
    with np.load(tmp_path / "run" / "item_table.npz") as saved:
        flower = saved[ITEM_EMBEDDING]

    # computed apart from the federation: the users' deflated Σ w y yᵀ over the most popular
    # items, d their popularity direction
    split = load_split(cfg.dataset)
    users = choose_users(split.train.num_users, 12, seed=0)
    logs = per_user_items(split.train, split.train.num_users)
    popularity = np.zeros(split.train.num_items)
    for user in users:
        popularity[np.unique(logs[user])] += 1 / math.sqrt(len(np.unique(logs[user])))
    keep = math.ceil(0.1 * split.train.num_items)
    ids = np.sort(np.argsort(-popularity, kind="stable")[:keep])
    direction = popularity[ids] / np.linalg.norm(popularity[ids])
    cov = sum(_deflated_apart(logs[user], ids, direction) for user in users)
    expected = np.zeros_like(flower, dtype=np.float64)
    expected[ids] = items_from_covariance(cov, 4, direction=direction)
    np.testing.assert_allclose(flower, expected, atol=1e-4)

    _, in_process = run_als_in_process(split, cfg.algorithm, embedding_dim=4, rounds=2, users=users)
    np.testing.assert_allclose(in_process[ITEM_EMBEDDING], expected, atol=1e-4)


def test_components_below_the_noise_edge_are_dropped_and_the_rest_shrunk():
    rng = np.random.default_rng(3)
    size, std = 200, 1.0
    basis = np.linalg.qr(rng.normal(size=(size, 4)))[0]
    direction = basis[:, 0]  # the popularity direction, released before
    # what the devices send has nothing along d; the fourth is below the edge (20)
    signal = basis[:, 1:] @ np.diag([400.0, 25.0, 5.0]) @ basis[:, 1:].T
    noisy = symmetric_noise(signal, std, rng)
    edge = spectral_edge(std, size)
    table = items_from_covariance(noisy, 6, edge, direction)
    kept = np.flatnonzero(np.abs(table).sum(axis=0) > 0)
    np.testing.assert_array_equal(kept, [0, 1, 2])  # d and the two real components, no noise
    scale = math.sqrt(size / 6)
    np.testing.assert_allclose(table[:, 0], direction * scale)
    for column, true in ((1, basis[:, 1]), (2, basis[:, 2])):
        length = np.linalg.norm(table[:, column]) / scale  # the shrinkage c
        cosine = abs(table[:, column] @ true) / np.linalg.norm(table[:, column])
        # c estimates the noisy eigenvector's alignment with the true one (spiked Wigner model)
        assert length == pytest.approx(cosine, abs=0.05)
        assert abs(table[:, column] @ direction) < 1e-9  # projected off d
    assert np.linalg.norm(table[:, 1]) / scale > 0.99 and np.linalg.norm(table[:, 2]) / scale < 0.95
    # noise alone: only d
    alone = items_from_covariance(
        symmetric_noise(np.zeros((size, size)), std, rng), 6, edge, direction
    )
    assert np.count_nonzero(np.abs(alone).sum(axis=0)) == 1
    # no noise: every component with a positive eigenvalue, whole, at an RMS row norm of 1
    exact = items_from_covariance(signal + np.diag(np.full(size, 1.0)), 4, direction=direction)
    assert np.sqrt(np.mean(np.sum(exact**2, axis=1))) == pytest.approx(1.0)


def test_a_dp_covariance_start_simulation_reports_its_guarantee(tmp_path):
    import json

    overrides = [
        *SMALL,
        "federation.engine=cohort",
        "federation.cohort_nodes=2",
        "privacy=user",
        "privacy.user_target_epsilon=4",
        "algorithm.clip_norm=1",
        "algorithm.max_items=10",
        "algorithm.item_grams=false",
    ]
    final = run_simulate(compose("simulate", overrides), tmp_path / "dp")
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    rows = training_rows(tmp_path / "dp")
    assert [float(r["accepted"]) for r in rows] == [12.0, 12.0]  # both releases taken whole
    plan = _start_plan(max_items=10, target_epsilon=4)
    reported = summary["user_level"]
    assert reported["noise_multiplier"] == pytest.approx(plan.noise_multiplier)
    assert reported["epsilon"] == pytest.approx(plan.epsilon_of(plan.run_history(2)))
    assert final["user_level_epsilon"] == pytest.approx(reported["epsilon"])
    assert 3.5 < reported["epsilon"] <= 4.01
    assert "covariance" in reported["mechanism"] and reported["noise_std"]["covariance"] > 0
    assert reported["accountant"] == "rdp"  # privacy.accountant's default
    assert "every item of a user's log" in summary["privacy"]["guarantee"]


def test_the_dp_als_scenario_composes_into_a_covariance_start_plan():
    from fedrec.config.rules import check_simulate
    from fedrec.jobs.simulate import als_server_plan

    cfg = compose("simulate", ["+experiment=ml100k_dp_als"])
    check_simulate(cfg)
    plan = als_server_plan(cfg.algorithm, cfg.privacy, rounds=2, devices_per_round=943)
    assert plan.covariance_start and plan.privacy is not None and plan.privacy.covariance_start
    assert plan.privacy.epsilon_of(plan.privacy.run_history(2)) <= 8.01
    assert cfg.federation.rounds == 2 and cfg.model.embedding_dim == 8


def test_the_popularity_round_marks_the_items_the_covariance_covers(ml100k_shaped_split):
    split = ml100k_shaped_split
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, release="popularity")
    zeros = {  # an all-zero initial table (model.init_std=0) must not hide the frequent items
        ITEM_EMBEDDING: np.zeros((split.train.num_items, 8)),
        ITEM_BIAS: np.zeros((split.train.num_items, 1)),
    }
    result = als_round(
        zeros, split_members(split, 40), spec=spec, explicit=False, keep_updates=True
    )
    plan = AlsServerPlan(spec, frequent_fraction=0.1, covariance_start=True)
    rule = AlsRule(plan, rounds=2, min_replies=1, seed=0)
    assert rule.round_config(1, {})["als.release"] == "popularity"
    replies = [trained_reply(k, arrays) for k, arrays in result.updates.items()]
    table = rule.apply(1, zeros, replies, RoundRecord(server_round=1, sampled=len(replies)))
    assert table is not None
    marked = np.any(table[ITEM_EMBEDDING] != 0, axis=1)
    assert marked.sum() == math.ceil(0.1 * split.train.num_items)
    popularity = np.zeros(split.train.num_items)
    for arrays in result.updates.values():
        popularity[arrays[ITEMS]] += arrays[COUNTS]
    assert popularity[marked].min() >= popularity[~marked].max()  # the most popular, exactly
    # column 0 carries their popularity direction (unit norm), the other columns nothing
    embedding = table[ITEM_EMBEDDING]
    np.testing.assert_allclose(
        embedding[marked, 0], popularity[marked] / np.linalg.norm(popularity[marked]), rtol=1e-5
    )
    assert not embedding[:, 1:].any()
    assert rule.round_config(2, {})["als.release"] == "covariance"
