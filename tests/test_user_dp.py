"""User-level DP (DP-FedAvg): accountant against independent computations, the mechanism's
calibration, and real federations on ML-100K users in modes ``user`` and ``both``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from scipy import optimize, special, stats

from fedrec.config import compose
from fedrec.jobs.simulate import initial_item_arrays, prepare_federation, run_simulate
from fedrec.privacy import PrivacySpec
from fedrec.privacy.user_level import (
    UserLevelPlan,
    clip_update,
    noisy_mean,
    plan_user_level,
    update_norm,
)
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY

DELTA = 1e-5


def _rdp_to_epsilon(orders, rdp, delta):
    """Balle et al. 2020, Thm 21 (the conversion Opacus uses), written out here."""
    orders, rdp = np.asarray(orders, float), np.asarray(rdp, float)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


def _plan(z, q, accountant="rdp"):
    return UserLevelPlan(1.0, z, q, 10, 100, DELTA, accountant)


def test_full_participation_is_the_gaussian_mechanism_composed():
    # q = 1: every round is the Gaussian mechanism with sensitivity C and std z·C, whose RDP
    # is α / (2 z²) at every order; T rounds add up.
    z, rounds = 1.3, 7
    orders = RDPAccountant.DEFAULT_ALPHAS
    expected = _rdp_to_epsilon(orders, [rounds * a / (2 * z**2) for a in orders], DELTA)
    assert _plan(z, 1.0).epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)


def test_subsampled_gaussian_matches_the_binomial_expansion():
    # Mironov et al. 2019, integer orders: A_α = Σ_k C(α,k) (1-q)^(α-k) q^k exp((k²-k) / 2z²).
    z, q, rounds = 1.1, 0.05, 50
    orders = list(range(2, 40))
    rdp = []
    for a in orders:
        k = np.arange(a + 1)
        terms = special.comb(a, k) * (1 - q) ** (a - k) * q**k * np.exp((k**2 - k) / (2 * z**2))
        rdp.append(math.log(terms.sum()) / (a - 1))
    np.testing.assert_allclose(compute_rdp(q=q, noise_multiplier=z, steps=1, orders=orders), rdp)
    integer_orders = _rdp_to_epsilon(orders, rounds * np.asarray(rdp), DELTA)
    server = _plan(z, q).epsilon_after(rounds)  # Opacus' finer grid of orders: a bit tighter
    assert 0.97 * integer_orders <= server <= integer_orders


def test_prv_accountant_matches_the_exact_gaussian_epsilon():
    # q = 1, T rounds of std z·C = one Gaussian mechanism with μ = √T / z; exact δ(ε) from
    # Balle & Wang 2018: Φ(μ/2 - ε/μ) - e^ε Φ(-μ/2 - ε/μ).
    z, rounds = 2.0, 10
    mu = math.sqrt(rounds) / z

    def delta_at(eps):
        below = stats.norm.cdf(-mu / 2 - eps / mu)
        return stats.norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * below

    exact = optimize.brentq(lambda e: delta_at(e) - DELTA, 1e-6, 100)
    prv = _plan(z, 1.0, "prv").epsilon_after(rounds)
    assert prv == pytest.approx(exact, rel=0.02)
    fresh = PRVAccountant()
    fresh.history = [(z, 1.0, rounds)]
    assert prv == pytest.approx(fresh.get_epsilon(delta=DELTA), rel=1e-9)
    assert _plan(z, 1.0).epsilon_after(rounds) >= prv  # RDP is an upper bound


def test_clipping_bounds_the_whole_update_and_keeps_small_ones():
    rng = np.random.default_rng(0)
    big = {
        "item_embedding.weight": rng.normal(size=(50, 8)).astype(np.float32),
        "item_bias.weight": rng.normal(size=(50, 1)).astype(np.float32),
    }
    clipped = clip_update(big, 0.5)
    assert update_norm(big) > 10 and update_norm(clipped) <= 0.5
    assert update_norm(clipped) == pytest.approx(0.5, rel=1e-5)
    assert all(clipped[k].dtype == np.float32 for k in big)
    ratio = clipped["item_bias.weight"] / big["item_bias.weight"]
    assert np.allclose(ratio, ratio.flat[0])  # one scale for every array: direction kept
    small = {k: v / 1000 for k, v in big.items()}
    assert all(np.array_equal(clip_update(small, 0.5)[k], small[k]) for k in small)


def test_noisy_mean_divides_by_the_fixed_denominator_and_calibrates_noise_to_the_sum():
    like = {"t": np.zeros((400, 250), dtype=np.float32)}
    rng = np.random.default_rng(1)
    updates = [{"t": rng.normal(size=(400, 250)).astype(np.float32)} for _ in range(3)]
    exact = noisy_mean(
        updates,
        like=like,
        clip_norm=2.0,
        noise_multiplier=0.0,
        expected_clients=8,
        rng=rng,
    )
    expected = sum(clip_update(u, 2.0)["t"].astype(np.float64) for u in updates) / 8
    np.testing.assert_allclose(exact["t"], expected, rtol=1e-5, atol=1e-9)
    noise_only = noisy_mean(
        [], like=like, clip_norm=0.5, noise_multiplier=1.5, expected_clients=8, rng=rng
    )["t"]
    assert noise_only.dtype == np.float32
    assert noise_only.std() == pytest.approx(1.5 * 0.5 / 8, rel=0.01)  # z·C on the sum, / m
    assert abs(noise_only.mean()) < 1e-3


def test_solved_noise_fits_the_budget_and_an_over_budget_run_is_refused():
    privacy = PrivacySpec(mode="user", user_target_epsilon=2.0, solve_user_noise_multiplier=True)
    plan = plan_user_level(privacy, num_clients=943, clients_per_round=50, rounds=20)
    spent = plan.epsilon_after(20)
    assert 1.9 <= spent <= 2.0 and plan.sample_rate == pytest.approx(50 / 943)
    assert plan.expected_clients == 50
    fixed = PrivacySpec(mode="user", user_noise_multiplier=0.5, user_target_epsilon=2.0)
    with pytest.raises(ValueError, match="past privacy.user_target_epsilon=2"):
        plan_user_level(fixed, num_clients=943, clients_per_round=50, rounds=20)
    with pytest.raises(ValueError, match="solve_user_noise_multiplier needs"):
        PrivacySpec(mode="user", solve_user_noise_multiplier=True)
    with pytest.raises(ValueError, match="privacy.mode='users'"):
        PrivacySpec(mode="users")


def test_user_level_configs_are_typed_and_refuse_what_would_break_the_bound():
    assert compose("simulate", ["privacy=user"]).privacy.user_level
    both = compose("simulate", ["privacy=both"]).privacy
    assert both.user_level and both.record_level
    with pytest.raises(Exception, match="user_clipnorm"):
        compose("simulate", ["privacy=user", "privacy.user_clipnorm=2"])
    tiny = [
        "dataset=synthetic_ml100k",
        "privacy=user",
        "federation.num_clients=10",
        "federation.clients_per_round=5",
    ]
    weighted = compose("simulate", [*tiny, "federation.weighting=examples"])
    with pytest.raises(ValueError, match="weighting=examples cannot be used with user-level"):
        prepare_federation(weighted)
    over = compose("simulate", [*tiny, "privacy.user_target_epsilon=0.5"])
    with pytest.raises(ValueError, match="past privacy.user_target_epsilon"):
        prepare_federation(over)


class UpdateAudit:
    """Client mod: save every training update as it leaves the device (one .npz per reply);
    updates from the partitions in ``corrupt`` are then replaced by NaNs (to be rejected)."""

    def __init__(self, folder: str, corrupt: frozenset[int] = frozenset()) -> None:
        self.folder = folder
        self.corrupt = corrupt

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content[CONFIG_KEY]["server-round"])
        if ARRAYS_KEY not in reply.content.array_records:
            return reply  # a user at their record-level budget sends no update
        arrays = {k: v.numpy() for k, v in reply.content[ARRAYS_KEY].items()}
        bad = partition in self.corrupt
        name = f"r{server_round}_p{partition}_{int(bad)}.npz"
        np.savez(os.path.join(self.folder, name), **arrays)
        if bad:
            arrays = {k: np.full_like(v, np.nan) for k, v in arrays.items()}
            reply.content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply


def _saved_updates(folder: Path):
    for path in sorted(folder.glob("r*_p*_*.npz")):
        server_round, partition, bad = path.stem.split("_")
        with np.load(path) as data:
            yield int(server_round[1:]), int(partition[1:]), bad == "1", dict(data)


def _rows(run_dir: Path):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


CLIP, Z, SERVER_LR = 0.5, 1.0, 3.0


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("user_dp")
    audit = run_dir / "updates"
    audit.mkdir()
    cfg = compose(
        "simulate",
        [
            "dataset=synthetic_ml100k",
            "privacy=user",
            f"privacy.user_clip_norm={CLIP}",
            f"privacy.user_noise_multiplier={Z}",
            "federation.num_clients=100",
            "federation.clients_per_round=30",
            "federation.rounds=2",
            "federation.local.epochs=1",
            "federation.eval_clients_per_round=0",
            f"strategy.server_lr={SERVER_LR}",
            "federation.ray_cpus=2",
        ],
    )
    # Which partitions the server samples depends on the node ids the simulation draws, so it
    # varies between runs: with 20 of 100 corrupted, a run without a corrupted reply to reject
    # has chance 0.7^40 (30 % sampled per round, 2 rounds); with 5 it was 0.7^10, about 3 %.
    mod = UpdateAudit(str(audit), corrupt=frozenset(range(20)))
    final = run_simulate(cfg, run_dir, client_mods=[mod])
    return cfg, run_dir, final, list(_saved_updates(audit))


def test_every_released_update_is_clipped_on_the_device(user_run):
    _, run_dir, _, updates = user_run
    rows = _rows(run_dir)
    assert [int(r["server_round"]) for r in rows] == [1, 2]
    assert len(updates) == sum(int(r["sampled"]) for r in rows) > 0
    norms = [update_norm(arrays) for _, _, _, arrays in updates]
    assert max(norms) <= CLIP
    assert sum(n > 0.99 * CLIP for n in norms) > len(norms) / 2  # the bound is binding
    rejected = sum(bad for _, _, bad, _ in updates)
    assert rejected > 0 and sum(int(r["rejected"]) for r in rows) == rejected


def test_the_server_reports_the_accountants_user_level_epsilon(user_run):
    cfg, run_dir, final, _ = user_run
    reported = [float(r["user_level_epsilon"]) for r in _rows(run_dir)]
    for rounds, epsilon in enumerate(reported, start=1):
        fresh = RDPAccountant()
        fresh.history = [(Z, 30 / 100, rounds)]
        assert epsilon == pytest.approx(fresh.get_epsilon(delta=cfg.privacy.delta), rel=1e-9)
    assert reported[0] < reported[1] == final["user_level_epsilon"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["privacy"]["guarantee"].startswith("user-level")
    assert summary["user_level"]["epsilon"] == pytest.approx(reported[-1])
    assert summary["user_level"]["denominator"] == 30
    assert "epsilon_per_user" not in summary  # no record-level ε is claimed


def test_the_release_is_the_sum_plus_noise_over_the_fixed_denominator(user_run):
    # final = initial + server_lr · Σ_rounds (Σ accepted clipped updates + ξ_round) / 30, so
    # the residual below is ξ_1 + ξ_2: std z·C·√2 if and only if the denominator is the fixed
    # 30 (dividing by the accepted count instead would leave ~10 % of the sum in it).
    cfg, run_dir, _, updates = user_run
    initial = initial_item_arrays(cfg, prepare_federation(cfg)[0].train.num_items)
    final = np.load(run_dir / "item_table.npz")
    for name in initial:
        accepted = sum(a[name].astype(np.float64) for _, _, bad, a in updates if not bad)
        moved = (final[name].astype(np.float64) - initial[name]) * 30 / SERVER_LR
        residual = moved - accepted
        assert residual.std() == pytest.approx(Z * CLIP * math.sqrt(2), rel=0.03), name
        assert abs(residual.mean()) < 0.02


def test_both_modes_together_report_both_guarantees(tmp_path):
    audit = tmp_path / "updates"
    audit.mkdir()
    overrides = [
        "dataset=synthetic_ml100k",
        "privacy=both",
        f"privacy.user_clip_norm={CLIP}",
        "federation.num_clients=8",
        "federation.clients_per_round=4",
        "federation.rounds=2",
        "federation.local.epochs=1",
        "federation.local.batch_size=16",
        "federation.eval_clients_per_round=8",
        "federation.ray_cpus=2",
    ]
    cfg = compose("simulate", overrides)
    final = run_simulate(cfg, tmp_path, client_mods=[UpdateAudit(str(audit))])
    updates = list(_saved_updates(audit))
    assert updates and max(update_norm(a) for _, _, _, a in updates) <= CLIP
    rows = _rows(tmp_path)
    assert [int(r["server_round"]) for r in rows] == [0, 1, 2]
    assert final["epsilon_max"] > 0  # record-level, from the devices' ledgers
    fresh = RDPAccountant()
    fresh.history = [(1.0, 0.5, 2)]
    assert final["user_level_epsilon"] == pytest.approx(fresh.get_epsilon(delta=DELTA), rel=1e-9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["privacy"]["guarantee"].startswith("record-level")
    assert "user-level" in summary["privacy"]["guarantee"]
    assert summary["epsilon_per_user"]["max"] == final["epsilon_max"]
    assert summary["user_level"]["epsilon"] == final["user_level_epsilon"]
    assert 0 <= final["ndcg@10"] <= 1


def test_rounds_without_sampled_clients_still_release_noise_with_fedadam(tmp_path):
    # q = 1/4 over 4 clients: some rounds sample nobody (Poisson sampling). Those rounds are
    # releases too (noise only), so the user-level ε grows every round, whoever took part.
    overrides = [
        "dataset=synthetic_ml100k",
        "privacy=user",
        "strategy=fedadam",
        "strategy.server_lr=0.01",
        "federation.num_clients=4",
        "federation.clients_per_round=1",
        "federation.rounds=4",
        "federation.local.epochs=1",
        "federation.eval_clients_per_round=0",
        "federation.ray_cpus=2",
    ]
    final = run_simulate(compose("simulate", overrides), tmp_path)
    rows = _rows(tmp_path)
    assert 0 in [int(r["sampled"]) for r in rows]
    fresh = RDPAccountant()
    for rounds, row in enumerate(rows, start=1):
        fresh.history = [(1.0, 0.25, rounds)]
        expected = fresh.get_epsilon(delta=DELTA)
        assert float(row["user_level_epsilon"]) == pytest.approx(expected, rel=1e-9)
    table = np.load(tmp_path / "item_table.npz")
    assert all(np.isfinite(table[name]).all() for name in table.files)
    assert final["user_level_epsilon"] == float(rows[-1]["user_level_epsilon"])
