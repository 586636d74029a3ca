"""Federated (DP-)ALS: what travels, the contribution bounds DP-ALS's noise assumes, its
accountant and noise scale, engine equality, and the server's refusal of bad statistics.

Real Flower simulations (per-user and cohort nodes) on the small synthetic log; the in-process
federation and the server rule on the ML-100K-shaped synthetic log.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

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
from opacus.accountants import RDPAccountant

from fedrec.client import FedrecClient
from fedrec.client.store import USER_ARRAYS
from fedrec.config import compose
from fedrec.config.algorithm import AlgorithmSpec
from fedrec.federation.als_checks import statistics_rejection
from fedrec.federation.als_rule import (
    MAX_POPULARITY_WEIGHT,
    AlsRule,
    AlsServerPlan,
    noisy_sums,
)
from fedrec.federation.record import RoundRecord
from fedrec.jobs.simulate import choose_users, run_simulate
from fedrec.jobs.tune import candidates, run_als_in_process
from fedrec.model.spec import ModelSpec
from fedrec.privacy import PrivacySpec
from fedrec.privacy.als import (
    AlsPrivacyPlan,
    noise_share,
    noise_stds,
    plan_dp_als,
    topup_fraction,
)
from fedrec.protocol.replies import NodeReply, UserOutcome
from fedrec.protocol.settings import (
    AlsSpec,
    RoundRefused,
    RoundSettings,
    parse_round_config,
    round_config,
)
from fedrec.training.als.statistics import COUNTS, GRAM, ITEMS, LHS, RHS, STATISTIC_NAMES
from fedrec.training.als.trainer import als_round
from fedrec.training.table_check import check_item_table

SMALL = [*TWELVE_USER_ALS, "model.embedding_dim=8", "federation.cohort_nodes=2"]


def _table(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "item_table.npz") as table:
        return {name: table[name] for name in table.files}


def test_flower_engines_agree_and_no_message_holds_the_user_factor(tmp_path):
    audit = tmp_path / "replies"
    audit.mkdir()
    per_user = tmp_path / "per_user"
    run_simulate(compose("simulate", SMALL), per_user, client_mods=[ReplyAudit(audit)])
    cohort = tmp_path / "cohort"
    run_simulate(compose("simulate", [*SMALL, "federation.engine=cohort"]), cohort)

    replies = [dict(np.load(path)) for path in sorted(audit.glob("*.npz"))]
    assert len(replies) == 2 * 12  # every user, both rounds
    for arrays in replies:
        # what left the device: the item statistics, never the factor (or any user-side name)
        assert set(arrays) == set(STATISTIC_NAMES)
        assert arrays[ITEMS].dtype == np.int64  # item ids arrive exact
        assert not any(name.startswith("user") for name in arrays)
    # the factor stayed on the device: its state store holds it (12 users, dim 8)
    import sqlite3

    with sqlite3.connect(per_user / "device_states.sqlite") as db:
        assert db.execute("select count(*) from sqlite_master").fetchone()[0] > 0

    first, second = _table(per_user), _table(cohort)
    # float32 on the wire, float64 sums on the server / the node: equal to rounding
    np.testing.assert_allclose(
        first["item_embedding.weight"], second["item_embedding.weight"], atol=2e-4, rtol=1e-3
    )

    # and the in-process federation, with and without per-user replies, agrees too
    split = compose("simulate", SMALL)
    from fedrec.data import load_split

    data = load_split(split.dataset)
    users = choose_users(data.train.num_users, 12, seed=0)  # the users run_simulate chose
    _, in_process = run_als_in_process(
        data, split.algorithm, embedding_dim=8, rounds=2, seed=0, users=users
    )
    np.testing.assert_allclose(
        first["item_embedding.weight"], in_process["item_embedding.weight"], atol=2e-4, rtol=1e-3
    )


class ClearBytes:
    """A client mod that writes, per training reply, the bytes its array records carry (under
    SecAgg+ the statistics travel masked in config records, so there should be none). It runs
    in the simulation's workers: it reports through files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            records = reply.content.array_records.values()
            clear = sum(len(a.data) for r in records for a in r.values())
            name = f"{context.node_id}_{msg.metadata.message_id}.txt"
            (self.folder / name).write_text(str(clear))
        return reply


def test_als_over_secure_aggregation_equals_the_plain_run(tmp_path):
    bounded = [
        *SMALL,
        "algorithm.item_grams=false",
        "algorithm.clip_norm=1",
        "algorithm.max_items=10",
    ]
    plain = tmp_path / "plain"
    run_simulate(compose("simulate", bounded), plain)
    secure = tmp_path / "secagg"
    wire = tmp_path / "wire"
    wire.mkdir()
    run_simulate(
        compose("simulate", [*bounded, "secure_aggregation=secaggplus"]),
        secure,
        client_mods=[ClearBytes(wire)],
    )
    # the server got only masked vectors: no statistics in the clear (4 SecAgg+ stages per
    # round, each a training message, for 12 devices and 2 rounds)
    clear = [int(path.read_text()) for path in wire.glob("*.txt")]
    assert len(clear) == 4 * 12 * 2 and not any(clear)
    rows = training_rows(secure)
    assert [float(r["accepted"]) for r in rows] == [12.0, 12.0]
    assert all(float(r["rejected"]) == 0 for r in rows)
    # the same table as the plain run, to the quantization of SecAgg+ (2 / 2²² per value)
    np.testing.assert_allclose(
        _table(plain)["item_embedding.weight"],
        _table(secure)["item_embedding.weight"],
        atol=1e-4,
        rtol=1e-3,
    )

    # DP-ALS on SecAgg+: the devices bound their statistics, the server noises the secure sum
    private = tmp_path / "dp_secagg"
    dp = ["privacy=user", "privacy.user_target_epsilon=4", "algorithm.max_items=10"]
    final = run_simulate(
        compose("simulate", [*bounded, *dp, "secure_aggregation=secaggplus"]), private
    )
    rows = training_rows(private)
    assert [float(r["accepted"]) for r in rows] == [12.0, 12.0]
    assert 0 < final["user_level_epsilon"] <= 4.01

    # Distributed DP-ALS: the devices add the noise. t = ⌈0.9 · 12⌉ = 11 shares suffice, and the
    # other 11 shares in each round's sum cover every user, so the server adds none: the table
    # still moves far beyond SecAgg+'s quantization from the same run with (almost) no noise
    # (z = 1e-6), by the shares alone.
    shared = [
        *bounded,
        "privacy=user",
        "secure_aggregation=secaggplus",
        "secure_aggregation.clipping_range=20",
        "algorithm.noise_shares=0.9",
    ]
    quiet = tmp_path / "quiet"
    run_simulate(compose("simulate", [*shared, "privacy.user_noise_multiplier=1e-6"]), quiet)
    shared.append("privacy.user_target_epsilon=4")
    distributed = tmp_path / "distributed"
    final = run_simulate(compose("simulate", shared), distributed)
    rows = training_rows(distributed)
    assert [float(r["accepted"]) for r in rows] == [12.0, 12.0]
    assert [float(r["server_noise_fraction"]) for r in rows] == [0.0, 0.0]
    noisy, still = (
        _table(distributed)["item_embedding.weight"],
        _table(quiet)["item_embedding.weight"],
    )
    assert np.abs(noisy - still).max() > 100 * 1e-4
    assert 0 < final["user_level_epsilon"] <= 4.01
    assert final["server_view_epsilon"] == pytest.approx(final["user_level_epsilon"])
    summary = json.loads((distributed / "summary.json").read_text())
    assert "distributed DP-ALS" in summary["privacy"]["guarantee"]
    assert summary["user_level"]["noise_shares"] == 11
    assert "noise shares" in summary["secure_aggregation"]["server_saw"]
    assert summary["secure_aggregation"]["clipped_values"] == 0

    # Two devices drop out of round 1 (fault seed 53) with t = 12: the sum holds 10 shares, so a
    # user is covered by 9 of the 12 the noise needs. The server tops up the missing quarter of
    # the variance (the model keeps its ε) and charges what it saw itself to its own ε.
    dropped = tmp_path / "dropped"
    final = run_simulate(
        compose(
            "simulate",
            [
                *shared,
                "algorithm.noise_shares=1.0",  # overrides 0.9
                "faults.dropout_rate=0.2",
                "faults.seed=53",
                "faults.dropout_after_training=0",
            ],
        ),
        dropped,
    )
    rows = training_rows(dropped)
    assert [float(r["accepted"]) for r in rows] == [10.0, 12.0]
    fractions = [float(r["server_noise_fraction"]) for r in rows]
    assert fractions == pytest.approx([1 - 9 / 12, 1 - 11 / 12])
    z = json.loads((dropped / "summary.json").read_text())["user_level"]["noise_multiplier"]
    fresh = RDPAccountant()
    for ratio, counts in ((9 / 12, True), (11 / 12, False)):
        zr = z * math.sqrt(ratio)
        for multiplier in (4.0 * zr, zr, *([zr] if counts else [])):
            fresh.step(noise_multiplier=multiplier, sample_rate=1.0)
    assert final["server_view_epsilon"] == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    assert final["server_view_epsilon"] > final["user_level_epsilon"]
    assert final["user_level_epsilon"] <= 4.01


def test_each_users_real_contribution_stays_within_the_sensitivity_bounds(ml100k_shaped_split):
    clip, budget, dim = 0.5, 10, 16
    rng = np.random.default_rng(0)
    table = {
        "item_embedding.weight": rng.normal(0, 0.3, (ml100k_shaped_split.train.num_items, dim)),
        "item_bias.weight": np.zeros((ml100k_shaped_split.train.num_items, 1)),
    }
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, max_items=budget, clip_norm=clip)
    members = split_members(ml100k_shaped_split, 60)
    result = als_round(table, members, spec=spec, explicit=False, keep_updates=True)
    assert len(result.updates) == 60
    plan = AlsServerPlan(spec, privacy=AlsPrivacyPlan(clip, budget, 1.0, 1e-5))
    binding = 0
    for member in members:
        stats = result.updates[member.key]
        gram, lhs, rhs, counts = stats[GRAM], stats[LHS], stats[RHS], stats[COUNTS]
        assert len(stats[ITEMS]) <= budget
        assert set(stats[ITEMS]) <= set(member.data.train_items.tolist())
        assert np.linalg.norm(gram) <= clip**2 * (1 + 1e-5)  # ‖u uᵀ‖_F = ‖u‖²
        assert np.linalg.norm(lhs) <= math.sqrt(budget) * clip**2 * (1 + 1e-5)
        assert np.linalg.norm(rhs) <= math.sqrt(budget) * clip * (1 + 1e-5)
        assert np.all(counts == 1) and np.linalg.norm(counts) <= math.sqrt(budget)
        binding += len(member.data.train_items) > budget
        assert (
            statistics_rejection(
                stats, num_items=len(table["item_bias.weight"]), dim=dim, users=1, plan=plan
            )
            is None
        )
    assert binding > 30  # the item budget bound most of these users (the test tests something)
    # the node's sum is the sum of its users' statistics
    total = result.update_sum
    assert np.allclose(total[GRAM], sum(result.updates[m.key][GRAM] for m in members), atol=1e-5)


def _in_process_dp(
    split, epsilon: float, rounds: int, item_grams: bool = True
) -> tuple[list[float], AlsPrivacyPlan]:
    """DP-ALS in process on the first 80 users; the per-round ε the server recorded."""
    algorithm = AlgorithmSpec(
        name="als",
        clip_norm=1.0,
        max_items=20,
        frequent_fraction=0.5,
        item_grams=item_grams,
        count_noise_scale=1.0 if item_grams else 0.5,
    )
    privacy = PrivacySpec(mode="user", user_target_epsilon=epsilon, delta=1e-5)
    records, private = run_in_process(split, algorithm, privacy, rounds, np.arange(80))
    return [r.user_level_epsilon for r in records], private


@pytest.mark.parametrize("item_grams", [True, False])
def test_epsilon_is_a_fresh_accountants_for_the_releases_made(ml100k_shaped_split, item_grams):
    spent, private = _in_process_dp(ml100k_shaped_split, 4.0, 3, item_grams)
    assert len(spent) == 3
    z = private.noise_multiplier
    for rounds_done, epsilon in enumerate(spent, 1):
        fresh = RDPAccountant()
        for _ in range(rounds_done):  # each release: G at scale·z, (all A_j and) all b_j at z
            fresh.step(noise_multiplier=private.gram_noise_scale * z, sample_rate=1.0)
            for _ in range(2 if item_grams else 1):
                fresh.step(noise_multiplier=z, sample_rate=1.0)
        fresh.step(noise_multiplier=private.count_noise_scale * z, sample_rate=1.0)  # counts
        assert epsilon == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    # the target ε was solved for: spent after the last round, within the accountant's grid
    assert 3.5 < spent[-1] <= 4.0 * (1 + 1e-6) + 0.01


def test_the_noise_has_the_stated_scale():
    private = plan_dp_als(
        clip_norm=0.7,
        max_items=30,
        delta=1e-5,
        rounds=5,
        noise_multiplier=1.3,
        count_noise_scale=0.5,
    )
    stds = private.stds
    assert stds["rhs"] == pytest.approx(1.3 * math.sqrt(30) * 0.7)
    assert stds["lhs"] == pytest.approx(1.3 * math.sqrt(30) * 0.7**2)
    assert stds["counts"] == pytest.approx(0.5 * 1.3 * math.sqrt(30))
    assert stds["gram"] == pytest.approx(4.0 * 1.3 * 0.7**2)
    items, dim = 400, 16
    lhs, rhs, counts, gram = noisy_sums(
        private,
        np.zeros((items, dim, dim)),
        np.zeros((items, dim)),
        np.zeros(items),
        np.zeros((dim, dim)),
        np.random.default_rng(1),
    )
    assert rhs.std() == pytest.approx(stds["rhs"], rel=0.03)
    assert counts.std() == pytest.approx(stds["counts"], rel=0.1)
    off = ~np.eye(dim, dtype=bool)
    # symmetrised i.i.d. noise: off-diagonal std / √2, diagonal std unchanged
    assert lhs[:, off].std() == pytest.approx(stds["lhs"] / math.sqrt(2), rel=0.03)
    assert np.diagonal(lhs, axis1=1, axis2=2).std() == pytest.approx(stds["lhs"], rel=0.05)
    assert np.allclose(lhs, np.swapaxes(lhs, 1, 2))


def _honest(split, spec: AlsSpec, dim: int = 8):
    rng = np.random.default_rng(0)
    table = {
        "item_embedding.weight": rng.normal(0, 0.3, (split.train.num_items, dim)),
        "item_bias.weight": np.zeros((split.train.num_items, 1)),
    }
    result = als_round(table, split_members(split, 6), spec=spec, explicit=False, keep_updates=True)
    return table, result


def test_bad_statistics_are_refused_and_counted(ml100k_shaped_split):
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, max_items=10, clip_norm=0.5)
    table, result = _honest(ml100k_shaped_split, spec)
    good = result.updates[0]

    def changed(**replace) -> dict[str, np.ndarray]:
        return {**{k: np.array(v) for k, v in good.items()}, **replace}

    nan_rhs = np.array(good[RHS])
    nan_rhs[0, 0] = np.nan
    indefinite = np.array(good[GRAM]) - 2 * np.eye(8)
    crafted = {
        "wrong shape": changed(**{LHS: np.zeros((len(good[ITEMS]), 8, 7))}),
        "NaN": changed(**{RHS: nan_rhs}),
        "not PSD": changed(**{GRAM: indefinite}),
        "over the clip bound": changed(**{RHS: good[RHS] * 3, GRAM: good[GRAM] * 9}),
        "item ids outside the catalogue": changed(**{ITEMS: good[ITEMS] + 10_000}),
        "a count above the users summed": changed(**{COUNTS: good[COUNTS] * 2}),
        "a missing statistic": {k: v for k, v in good.items() if k != COUNTS},
    }
    plan = AlsServerPlan(spec, privacy=AlsPrivacyPlan(0.5, 10, 1.0, 1e-5))
    for name, arrays in crafted.items():
        reason = statistics_rejection(
            arrays, num_items=len(table["item_bias.weight"]), dim=8, users=1, plan=plan
        )
        assert reason is not None, name

    rule = AlsRule(plan, rounds=1, min_replies=1, seed=0)
    replies = [trained_reply(k, result.updates[k]) for k in range(1, 6)]
    replies += [trained_reply(100 + i, arrays) for i, arrays in enumerate(crafted.values())]
    record = RoundRecord(server_round=1, sampled=len(replies))
    updated = rule.apply(1, table, replies, record)
    assert record.rejected == len(crafted) and record.accepted == 5
    assert updated is not None and np.isfinite(updated["item_embedding.weight"]).all()


def test_the_popularity_prior_stays_within_what_devices_accept(ml100k_shaped_split):
    # A popularity weight of 30 once made every device refuse round 2's table as crafted (its
    # top bias 32 above the median): the plan now refuses such a weight, and the largest it
    # accepts yields a table the devices' own check passes.
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1)
    with pytest.raises(ValueError, match="table check would refuse"):
        AlsServerPlan(spec, frequent_fraction=0.05, popularity_weight=30.0)
    table, result = _honest(ml100k_shaped_split, spec)
    plan = AlsServerPlan(spec, frequent_fraction=0.05, popularity_weight=MAX_POPULARITY_WEIGHT)
    rule = AlsRule(plan, rounds=1, min_replies=1, seed=0)
    replies = [trained_reply(k, update) for k, update in result.updates.items()]
    updated = rule.apply(1, table, replies, RoundRecord(server_round=1, sampled=len(replies)))
    assert updated is not None
    assert float(np.max(updated["item_bias.weight"])) == pytest.approx(MAX_POPULARITY_WEIGHT)
    check_item_table(updated)  # raises ImplausibleTable if the devices would refuse it


def test_config_rules_refuse_what_als_cannot_do(tmp_path):
    for overrides, phrase in (
        (["privacy=record"], "user-level DP on the aggregate"),
        (["privacy=user"], "needs algorithm.clip_norm > 0"),
        (["dataset=ml100k_explicit"], "implicit"),
        (["secure_aggregation=secaggplus"], "item_grams=false"),
        (["secure_aggregation=secaggplus", "algorithm.item_grams=false"], "clip_norm in"),
        (["strategy=fedadam"], "strategy=fedavg"),
        (["algorithm.popularity_weight=30"], "table check would refuse"),
        (["algorithm.noise_shares=0.5"], "distributed DP"),
        (
            [
                "secure_aggregation=secaggplus",
                "algorithm.item_grams=false",
                "algorithm.clip_norm=1",
                "algorithm.max_items=10",
                "privacy=user",
                "privacy.user_target_epsilon=4",
                "algorithm.noise_shares=0.5",
            ],
            "would clip the devices' noise shares",
        ),
    ):
        with pytest.raises(ValueError, match=phrase):
            run_simulate(compose("simulate", [*SMALL, *overrides]), tmp_path / "refused")
    with pytest.raises(ValueError, match="unknown field"):
        candidates(AlgorithmSpec(name="als"), 8, {"learning_rate": [0.1]})
    with pytest.raises(ValueError, match="reg"):
        candidates(AlgorithmSpec(name="als"), 8, {"reg": [0.0]})


def _popularity_hits(split, users, k: int = 10) -> float:
    counts = np.bincount(split.train.items, minlength=split.train.num_items).astype(float)
    hits = []
    for user in users:
        train = split.train.items[split.train.users == user]
        scores = counts.copy()
        scores[train] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        hits.append(np.isin(split.test.items[split.test.users == user], top).any())
    return float(np.mean(hits))


def test_the_embeddable_client_runs_the_als_round_and_cold_starts(tmp_path):
    from fedrec.client import FedrecClient, RoundSettings
    from fedrec.client.recommend import solve_own_factor
    from fedrec.data import load_split
    from fedrec.model.spec import ModelSpec

    cfg = compose("simulate", ["algorithm=als", "model.embedding_dim=16"])
    split = load_split(cfg.dataset)
    trained, held_out = np.arange(150), np.arange(150, 200)  # 50 users in no round at all
    _, table = run_als_in_process(
        split, cfg.algorithm, embedding_dim=16, rounds=4, seed=0, users=trained
    )
    spec = cfg.algorithm.als_spec()
    cold_hits = []
    for user in held_out:
        train = split.train.items[split.train.users == user]
        path = tmp_path / f"user{user}.sqlite"
        with FedrecClient.open(path, num_items=split.train.num_items) as client:
            for step, item in enumerate(train):
                client.record_interaction(int(item), category="view", timestamp=1e9 + step)
            recommended = [r.item for r in client.recommend(10, item_table=table)]
        assert not set(recommended) & set(train.tolist())  # never what they already have
        expected = solve_own_factor(table, train, spec)["user_embedding.weight"][0]
        from fedrec.training.als.solve import solve_users

        assert np.allclose(
            expected,
            solve_users(
                table["item_embedding.weight"],
                [train],
                reg=spec.reg,
                unobserved_weight=spec.unobserved_weight,
            )[0],
        )
        cold_hits.append(np.isin(split.test.items[split.test.users == user], recommended).any())
    cold, popular = float(np.mean(cold_hits)), _popularity_hits(split, held_out)
    # personal at once: the closed-form solve beats the popularity ranking on unseen users
    assert cold > popular + 0.05, (cold, popular)

    # a device's ALS round through the embedded client: statistics out, the factor kept
    with FedrecClient.open(tmp_path / "device.sqlite", num_items=split.train.num_items) as client:
        for step, item in enumerate(split.train.items[split.train.users == 0]):
            client.record_interaction(int(item), category="view", timestamp=1e9 + step)
        client.grant_consent(["view"])
        settings = RoundSettings(
            model=ModelSpec(16, 0.1), als=spec, algorithm="als", seed=0, server_round=1
        )
        update = client.train_round(table, settings)
        assert set(update.item_update) == set(STATISTIC_NAMES)
        kept = client.store.arrays(USER_ARRAYS)
        sent = client.privacy_report()
    assert kept is not None and "user_embedding.weight" in kept
    assert not any(name.startswith("user") for name in update.item_update)
    assert sent is not None


def test_statistics_are_drawn_among_the_items_the_table_trains(ml100k_shaped_split):
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, max_items=10, clip_norm=0.5)
    rng = np.random.default_rng(0)
    num_items = ml100k_shaped_split.train.num_items
    table = {
        "item_embedding.weight": rng.normal(0, 0.3, (num_items, 8)),
        "item_bias.weight": np.zeros((num_items, 1)),
    }
    untrained = rng.random(num_items) < 0.7  # the server left these at a zero row
    table["item_embedding.weight"][untrained] = 0
    result = als_round(
        table, split_members(ml100k_shaped_split, 20), spec=spec, explicit=False, keep_updates=True
    )
    for stats in result.updates.values():
        assert len(stats[ITEMS]) and not untrained[stats[ITEMS]].any()


def test_a_round_without_item_grams_sends_none_and_the_server_holds_to_that(
    ml100k_shaped_split, tmp_path
):
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, max_items=10, clip_norm=0.5, item_grams=False)
    table, result = _honest(ml100k_shaped_split, spec)
    lean = set(STATISTIC_NAMES) - {LHS}
    assert set(result.update_sum) == lean
    assert all(set(stats) == lean for stats in result.updates.values())
    # the rest of the statistics are the same numbers as a round that sends the Grams
    _, full = _honest(ml100k_shaped_split, dataclasses.replace(spec, item_grams=True))
    for name in lean:
        np.testing.assert_array_equal(result.update_sum[name], full.update_sum[name])

    num_items = len(table["item_bias.weight"])
    plan = AlsServerPlan(spec, privacy=AlsPrivacyPlan(0.5, 10, 1.0, 1e-5, item_grams=False))
    check = dict(num_items=num_items, dim=8, users=1, plan=plan)
    assert statistics_rejection(result.updates[0], **check) is None
    # a Gram the round did not ask for is refused (it is data the server would discard)
    assert "array names" in statistics_rejection(full.updates[0], **check)
    asks_grams = AlsServerPlan(
        dataclasses.replace(spec, item_grams=True), privacy=AlsPrivacyPlan(0.5, 10, 1.0, 1e-5)
    )
    assert "array names" in statistics_rejection(
        result.updates[0], num_items=num_items, dim=8, users=1, plan=asks_grams
    )

    # the server's choice travels in the round config, and a bad value is refused
    settings = RoundSettings(model=ModelSpec(8, 0.1), als=spec, algorithm="als", seed=0)
    config = round_config(settings)
    assert config["als.item_grams"] is False
    assert parse_round_config(config).als.item_grams is False
    with pytest.raises(RoundRefused, match="item_grams"):
        parse_round_config({**config, "als.item_grams": "no"})

    # the embeddable client's round: what leaves the device has no per-item Gram
    with FedrecClient.open(tmp_path / "device.sqlite", num_items=num_items) as client:
        train = ml100k_shaped_split.train
        for step, item in enumerate(train.items[train.users == 0]):
            client.record_interaction(int(item), category="view", timestamp=1e9 + step)
        client.grant_consent(["view"])
        update = client.train_round(
            {k: v.astype(np.float32) for k, v in table.items()},
            dataclasses.replace(settings, server_round=1),
        )
    assert set(update.item_update) == lean


def test_a_dp_als_simulation_reports_its_guarantee(tmp_path):

    audit = tmp_path / "replies"
    audit.mkdir()
    overrides = [
        *SMALL,
        "federation.engine=cohort",
        "privacy=user",
        "privacy.user_target_epsilon=4",
        "algorithm.clip_norm=1",
        "algorithm.max_items=10",
        "algorithm.item_grams=false",
        "algorithm.frequent_fraction=0.5",
    ]
    final = run_simulate(
        compose("simulate", overrides), tmp_path / "dp", client_mods=[ReplyAudit(audit)]
    )
    summary = json.loads((tmp_path / "dp" / "summary.json").read_text())
    # item_grams=false: the real replies carry no per-item Gram, and the server took them all
    replies = [dict(np.load(path)) for path in sorted(audit.glob("*.npz"))]
    assert replies and all(set(r) == set(STATISTIC_NAMES) - {LHS} for r in replies)
    rows = training_rows(tmp_path / "dp")
    assert [float(r["rejected"]) for r in rows] == [0.0, 0.0]
    assert all(float(r["accepted"]) == 12 for r in rows)
    reported = summary["user_level"]
    plan = plan_dp_als(
        clip_norm=1, max_items=10, delta=1e-5, rounds=2, target_epsilon=4, item_grams=False
    )
    assert summary["algorithm"] == "als"
    assert reported["noise_multiplier"] == pytest.approx(plan.noise_multiplier)
    assert reported["epsilon"] == pytest.approx(plan.epsilon_after(2, 1))
    assert (
        final["user_level_epsilon"] == pytest.approx(reported["epsilon"])
        and reported["epsilon"] <= 4.01
    )
    assert "DP-ALS" in summary["privacy"]["guarantee"]


def test_device_noise_shares_add_up_to_the_stated_noise():
    spec = AlsSpec(
        max_items=30,
        clip_norm=0.7,
        item_grams=False,
        noise_shares=8,
        noise_multiplier=1.3,
        count_noise_scale=0.5,
    )
    items, dim = 400, 16
    zeros = {
        COUNTS: np.zeros(items, np.float32),
        GRAM: np.zeros((dim, dim), np.float32),
        RHS: np.zeros((items, dim), np.float32),
    }
    stds = noise_stds(1.3, 0.7, 30, spec.gram_noise_scale, 0.5)
    rng = np.random.default_rng(3)
    shares = [noise_share(zeros, spec, rng) for _ in range(8)]
    one = shares[0]
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in zeros.items()}
    assert one[RHS].std() == pytest.approx(stds["rhs"] / math.sqrt(8), rel=0.03)
    total = {name: sum(share[name].astype(np.float64) for share in shares) for name in zeros}
    assert total[RHS].std() == pytest.approx(stds["rhs"], rel=0.03)
    assert total[COUNTS].std() == pytest.approx(stds["counts"], rel=0.1)
    assert total[GRAM].std() == pytest.approx(stds["gram"], rel=0.15)
    # a round that releases no counts sends none, noisy or not
    quiet = noise_share(
        {**zeros, COUNTS: np.ones(items, np.float32)},
        dataclasses.replace(spec, release_counts=False),
    )
    assert not quiet[COUNTS].any()
    # without a generator the share comes from fresh entropy: the run's seed does not draw it
    assert not np.array_equal(noise_share(zeros, spec)[RHS], noise_share(zeros, spec)[RHS])
    with pytest.raises(ValueError, match="no noise shares"):
        noise_share(zeros, dataclasses.replace(spec, noise_shares=0))
    with pytest.raises(ValueError, match="noise_shares > 0"):
        AlsSpec(noise_shares=4, max_items=10)  # no clip: a share could not be sized


def test_the_server_tops_up_missing_shares_and_accounts_for_what_it_saw(ml100k_shaped_split):
    assert [topup_fraction(s, 8) for s in (0, 1, 5, 9, 20)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert topup_fraction(30, 0) == 1.0  # central DP-ALS: the server adds it all
    spec = AlsSpec(reg=1.0, unobserved_weight=0.1, max_items=10, clip_norm=0.5, item_grams=False)
    table, result = _honest(ml100k_shaped_split, spec)
    private = AlsPrivacyPlan(0.5, 10, 1.0, 1e-5, item_grams=False, noise_shares=8)
    rule = AlsRule(AlsServerPlan(spec, privacy=private), rounds=2, min_replies=1, seed=0)
    assert rule.round_config(1, {"seed": 0})["als.release_counts"] is True
    # what SecAgg+ hands the server: one noisy sum over the catalogue, fractional counts and an
    # indefinite Gram included; only its form can be checked, and it is accepted
    dense = {
        ITEMS: np.arange(len(table["item_bias.weight"])),
        COUNTS: np.full(len(table["item_bias.weight"]), 0.4),
        GRAM: -np.eye(8),
        RHS: np.zeros((len(table["item_bias.weight"]), 8)),
    }
    secure = NodeReply(
        "secagg+", [UserOutcome(u, "trained") for u in range(5)], dense, 5.0, summed=True
    )
    first = RoundRecord(server_round=1, sampled=5)
    assert rule.apply(1, table, [secure], first) is not None
    assert first.accepted == 5 and first.rejected == 0
    assert first.server_noise_fraction == pytest.approx(0.5)  # 4 others of the 8 shares needed
    assert rule.round_config(2, {"seed": 0})["als.release_counts"] is False
    second = RoundRecord(server_round=2, sampled=10)
    nine = NodeReply(
        "secagg+", [UserOutcome(u, "trained") for u in range(10)], dense, 10.0, summed=True
    )
    rule.apply(2, table, [nine], second)
    assert second.server_noise_fraction == 0.0
    fresh = RDPAccountant()
    for ratio, counts in ((4 / 8, True), (1.0, False)):
        z = math.sqrt(ratio)
        for multiplier in (4.0 * z, z, *([z] if counts else [])):
            fresh.step(noise_multiplier=multiplier, sample_rate=1.0)
    assert second.server_view_epsilon == pytest.approx(fresh.get_epsilon(1e-5), rel=1e-9)
    assert second.user_level_epsilon == pytest.approx(private.epsilon_after(2, 1))
    assert second.server_view_epsilon > second.user_level_epsilon
    broken = NodeReply(
        "secagg+", [UserOutcome(0, "trained")], {**dense, RHS: np.zeros((3, 8))}, 1.0, summed=True
    )
    third = RoundRecord(server_round=3, sampled=1)
    rule.apply(3, table, [broken], third)
    assert third.rejected == 1  # the form is still checked
    # where no device adds a share (the in-process federation), the server would add too little
    # noise: the run is refused before any round
    distributed = AlgorithmSpec(
        name="als", clip_norm=1.0, max_items=10, item_grams=False, noise_shares=0.5
    )
    with pytest.raises(ValueError, match="needs devices that add noise shares"):
        run_als_in_process(
            ml100k_shaped_split,
            distributed,
            embedding_dim=8,
            rounds=1,
            privacy=PrivacySpec(mode="user", user_target_epsilon=4.0),
        )
