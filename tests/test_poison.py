"""Poisoning on a tiny real federation: boosting raises the target's exposure without a
defense, norm bounding lowers it and the default trimmed mean removes it; the robust rules are
Flower's; every config composes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ML100K_SHAPED, ML100K_SHAPED_SPEC

from fedrec.config import compose, config_dir
from fedrec.data import load_split
from fedrec.federation.defenses import DefenseSpec, aggregate
from fedrec.jobs.poison import PoisonJobConfig, run_poison
from fedrec.model import ModelSpec
from fedrec.model.mf import MatrixFactorization
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.poisoning.poisoners import AttackSpec, pick_target
from fedrec.poisoning.run import PoisonFederationSpec, run_poisoned_federation
from fedrec.privacy import PrivacySpec


@pytest.fixture(scope="module")
def federation():
    torch.set_num_threads(1)
    split = load_split(ML100K_SHAPED_SPEC)
    users = np.sort(np.random.default_rng(0).choice(split.train.num_users, 40, replace=False))
    popularity = np.bincount(split.train.items, minlength=split.train.num_items)
    initial = MatrixFactorization(
        1, split.train.num_items, 32, init_std=0.1, generator=torch.Generator().manual_seed(0)
    ).item_state()
    return split, users, popularity, initial


def _final_exposure(federation, attack: AttackSpec, defense: DefenseSpec) -> float:
    split, users, popularity, initial = federation
    spec = PoisonFederationSpec(num_clients=40, rounds=3, server_lr=16, eval_every_rounds=3)
    rows = run_poisoned_federation(
        honest=SimulatedClients.from_split(split, users),
        initial_items=initial,
        recipe=LocalRecipe(ModelSpec(32, 0.1), spec.local, PrivacySpec()),
        federation=spec,
        attack=attack,
        defense=defense,
        popularity=popularity,
        seed=0,
    )
    assert rows[-1]["malicious_clients"] == attack.num_malicious(40)
    return rows[-1]["exposure@10"]


def test_boosting_raises_exposure_and_the_defenses_lower_it(federation):
    boost = AttackSpec(kind="boost", fraction=0.1, popular_items=10, scale=20.0)
    clean = _final_exposure(federation, AttackSpec(kind="none"), DefenseSpec(name="none"))
    attacked = _final_exposure(federation, boost, DefenseSpec(name="none"))
    rejected = _final_exposure(federation, boost, DefenseSpec(name="norm_bound", action="reject"))
    clipped = _final_exposure(federation, boost, DefenseSpec(name="norm_bound"))
    assert clean < 0.05
    assert attacked > clean + 0.2
    assert rejected < attacked / 2  # as the strategy's max_update_norm: scaled fakes dropped
    assert clipped < attacked  # the fakes still count, at 3x the median norm
    # The default (configs/poison.yaml): 4 fakes among 44 updates, int(0.1 · 44) = 4 cut at
    # each end of every coordinate, so the target's row moves as if there were no attack.
    trimmed = _final_exposure(federation, boost, DefenseSpec(name="trimmed_mean", beta=0.1))
    assert trimmed <= clean
    assert compose("poison", []).defense.name == "trimmed_mean"


def test_target_is_the_coldest_item_with_data():
    popularity = np.array([5, 0, 2, 9, 2])
    assert pick_target(popularity, -1) == 2
    assert pick_target(popularity, 4) == 4
    with pytest.raises(ValueError, match="target_item"):
        pick_target(popularity, 7)


def test_defense_rules_by_hand():
    updates = [
        {"w": np.array([[1.0, 0.0]])},
        {"w": np.array([[3.0, 0.0]])},
        {"w": np.array([[100.0, 0.0]])},
    ]
    assert aggregate(updates, DefenseSpec(name="none"))["w"][0, 0] == pytest.approx(104 / 3)
    assert aggregate(updates, DefenseSpec(name="median"))["w"][0, 0] == 3.0
    # bound 3 × median norm 3 = 9: the 100 is rejected, or clipped to 9
    rejected = aggregate(updates, DefenseSpec(name="norm_bound", action="reject"))["w"][0, 0]
    assert rejected == 2.0
    clipped = aggregate(updates, DefenseSpec(name="norm_bound"))["w"][0, 0]
    assert clipped == pytest.approx((1 + 3 + 9) / 3, rel=1e-5)
    # Krum with f = 0: the update with the smallest distance to its n − 2 = 1 nearest: 1 or 3
    assert aggregate(updates, DefenseSpec(name="krum", num_malicious=0))["w"][0, 0] in (1.0, 3.0)
    five = [{"w": np.array([[v]])} for v in (0.0, 1.0, 2.0, 3.0, 50.0)]
    assert aggregate(five, DefenseSpec(name="trimmed_mean", beta=0.2))["w"][0, 0] == 2.0


@pytest.mark.parametrize(
    "override",
    [f"attack={p.stem}" for p in sorted((config_dir() / "attack").glob("*.yaml"))]
    + [f"defense={p.stem}" for p in sorted((config_dir() / "defense").glob("*.yaml"))],
)
def test_every_attack_and_defense_config_composes(override):
    cfg = compose("poison", [override, "attack.fraction=0.01"])
    assert isinstance(cfg, PoisonJobConfig)


def test_poison_config_refuses_unknown_names_and_keys():
    with pytest.raises(Exception, match="attack 'sybil'"):
        compose("poison", ["attack.kind=sybil"])
    with pytest.raises(Exception, match="defense 'bulyan'"):
        compose("poison", ["defense.name=bulyan"])
    with pytest.raises(Exception, match="fractoin|not in"):
        compose("poison", ["attack.fractoin=0.1"])


def test_poison_job_writes_its_run_directory(tmp_path):
    cfg = compose(
        "poison",
        [
            *ML100K_SHAPED,
            "attack=pipattack",
            "defense=median",
            "federation.num_clients=10",
            "federation.rounds=1",
            "model.embedding_dim=8",
        ],
    )
    result = run_poison(cfg, tmp_path)
    assert 0 <= result["exposure@10"] <= 1 and result["malicious_clients"] == 1
    for name in ("metrics.csv", "summary.json", "metrics.png"):
        assert (tmp_path / name).exists(), name
