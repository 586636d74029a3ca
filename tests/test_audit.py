"""The interaction-membership audit: bounds by hand, and attacks on a tiny real federation that
find membership without DP, stay near chance with strong DP, and catch a crafted table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import ML100K_SHAPED, ML100K_SHAPED_SPEC

from fedrec.config import compose
from fedrec.data import load_split
from fedrec.jobs.audit import AuditJobConfig, run_audit
from fedrec.membership.active import bias_silencing_table
from fedrec.membership.attacks import roc_auc
from fedrec.membership.bounds import auc_bound, tpr_bound
from fedrec.membership.run import AuditFederationSpec, AuditSetting, run_setting, setting_privacy
from fedrec.model import ModelSpec
from fedrec.model.mf import MatrixFactorization
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.privacy import PrivacySpec
from fedrec.training.table_check import ImplausibleTable, check_item_table

ATTACKS = ["update_norm", "user_direction", "shadow_classifier"]


def test_auc_bound_by_hand():
    assert auc_bound(0.0, 0.0) == pytest.approx(0.5)
    # δ = 0: the area under min(e^ε x, 1 − e^−ε (1 − x)) is e^ε / (1 + e^ε).
    for eps in (0.1, 1.0, 4.0):
        assert auc_bound(eps, 0.0) == pytest.approx(math.exp(eps) / (1 + math.exp(eps)))
    assert auc_bound(math.inf, 1e-5) == 1.0
    # Against a fine Riemann sum of the privacy region's upper edge, with δ > 0.
    grid = np.linspace(0, 1, 200_001)
    numeric = np.trapezoid([tpr_bound(x, 1.0, 0.05) for x in grid], grid)
    assert auc_bound(1.0, 0.05) == pytest.approx(numeric, abs=1e-6)
    assert auc_bound(1.0, 1e-5) < auc_bound(2.0, 1e-5) < auc_bound(8.0, 1e-5) < 1.0
    with pytest.raises(ValueError, match="epsilon"):
        auc_bound(-1.0, 0.0)


def test_roc_auc_by_hand_with_ties():
    members = np.array([True, False, True, False])
    assert roc_auc(np.array([3.0, 1.0, 2.0, 0.0]), members) == 1.0
    # positives 2 and 1; negatives 1 and 0: pairs (2>1, 2>0, 1=1 → ½, 1>0) = 3.5 / 4
    assert roc_auc(np.array([2.0, 1.0, 1.0, 0.0]), members) == pytest.approx(0.875)
    assert math.isnan(roc_auc(np.zeros(3), np.zeros(3, dtype=bool)))


@pytest.fixture(scope="module")
def tiny():
    """20 audited ML-100K users, 10 shadow users, the seeded initial table."""
    torch.set_num_threads(1)
    split = load_split(ML100K_SHAPED_SPEC)
    order = np.random.default_rng(0).permutation(split.train.num_users)
    initial = MatrixFactorization(
        1, split.train.num_items, 16, init_std=0.1, generator=torch.Generator().manual_seed(0)
    ).item_state()
    return split, order[:20], order[20:30], initial


def _audit(tiny, mode, epsilon, rounds=1):
    split, participant_ids, shadow_ids, initial = tiny
    federation = AuditFederationSpec(num_clients=20, shadow_clients=10, rounds=rounds)
    setting = AuditSetting(mode, epsilon)
    base = PrivacySpec(mode="record", target_epsilon=8.0, solve_noise_multiplier=True)
    return run_setting(
        setting,
        participants=SimulatedClients.from_split(split, participant_ids),
        shadows=SimulatedClients.from_split(split, shadow_ids),
        initial_items=initial,
        recipe=LocalRecipe(
            ModelSpec(16, 0.1), federation.local, setting_privacy(setting, base, rounds)
        ),
        federation=federation,
        attacks=ATTACKS,
        crafted_table="bias_silencing",
        seed=0,
        log=lambda _: None,
    )


def _best(tally):
    return max(np.mean(v) for v in tally.aucs.values())


def test_without_dp_the_server_finds_the_users_items(tiny):
    outcome = _audit(tiny, "none", math.inf)
    assert _best(outcome.views["update"]) > 0.9
    assert np.mean(outcome.views["update"].aucs["update_norm"]) > 0.75  # the simple one too
    # The crafted table silences the negatives: the rows that move are the user's items.
    assert _best(outcome.views["active"]) > 0.99
    assert outcome.table_check["crafted_table"].startswith("refused")
    assert outcome.table_check["honest_tables_refused"] == "0/1"


def test_strong_record_level_dp_keeps_the_attacks_near_chance(tiny):
    outcome = _audit(tiny, "record", 0.5)
    assert outcome.epsilon_spent <= 0.5 + 1e-6
    for view in ("update", "active"):
        tally = outcome.views[view]
        assert abs(_best(tally) - 0.5) < 0.06, view
        for game in tally.games.values():  # the exact game stays within the bound (noise: 3 se)
            assert game.auc() <= outcome.bounds[view] + 3 * game.standard_error()


def test_user_level_dp_does_not_hide_a_users_clipped_update_from_the_server(tiny):
    outcome = _audit(tiny, "user", 1.0)
    assert _best(outcome.views["update"]) > 0.9  # clipping rescales; the ranking survives
    assert outcome.bounds["update"] == 1.0
    assert abs(_best(outcome.views["aggregate"]) - 0.5) < 0.1  # only the noisy sum
    assert outcome.bounds["aggregate"] < 0.75


def test_the_device_refuses_a_crafted_table_but_not_an_honest_one(tiny):
    initial = tiny[3]
    check_item_table(initial)
    with pytest.raises(ImplausibleTable, match="bias"):
        check_item_table(bias_silencing_table(initial))
    shifted = {k: v.copy() for k, v in initial.items()}
    shifted["item_bias.weight"] -= 5.0  # within the absolute range, but a uniform jump
    with pytest.raises(ImplausibleTable, match="moved"):
        check_item_table(shifted, previous=initial)
    nan = {k: v.copy() for k, v in initial.items()}
    nan["item_embedding.weight"][3, 0] = np.nan
    with pytest.raises(ImplausibleTable, match="NaN"):
        check_item_table(nan)


def test_audit_config_composes_and_refuses_typos():
    cfg = compose("audit")
    assert isinstance(cfg, AuditJobConfig)
    assert cfg.dataset.name == "movielens_100k" and cfg.epsilons == [16, 8, 4, 1]
    with pytest.raises(Exception, match="roundz|not in"):
        compose("audit", ["federation.roundz=3"])
    with pytest.raises(Exception, match="membership attack"):
        compose("audit", ["attacks=[update_norm,gradient_magic]"])


def test_audit_job_writes_table_and_plot(tmp_path):
    cfg = compose(
        "audit",
        [
            *ML100K_SHAPED,
            "modes=[none,record]",
            "epsilons=[2]",
            "federation.num_clients=10",
            "federation.shadow_clients=5",
            "federation.rounds=1",
            "model.embedding_dim=8",
            "attacks=[update_norm,shadow_classifier]",
        ],
    )
    result = run_audit(cfg, tmp_path)
    assert result["auc_no_dp"] > 0.85 and "auc_record_eps2" in result
    for name in ("audit.csv", "audit.md", "audit.png", "summary.json", "metrics.csv"):
        assert (tmp_path / name).exists(), name
    text = (tmp_path / "audit.md").read_text()
    assert "crafted table" in text and "AUC bound" in text
