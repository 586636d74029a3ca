"""Frequency-scaled regularization (``reg_exponent`` ν, Rendle et al. 2022): each solve is the
exact minimum of its row's loss with λ·(n + α₀·M)^ν, every engine applies it alike, and bad
values are refused where they enter."""

from __future__ import annotations

import numpy as np
import pytest
from als_helpers import TWELVE_USER_ALS

from fedrec.config import compose
from fedrec.config.algorithm import AlgorithmSpec
from fedrec.data import load_split
from fedrec.eval.evaluate import per_user_items
from fedrec.jobs.simulate import choose_users, run_simulate
from fedrec.jobs.tune import candidates, grid_of, run_als_in_process
from fedrec.model.spec import ITEM_EMBEDDING
from fedrec.protocol.settings import AlsSpec, RoundSettings, parse_round_config, round_config
from fedrec.training.als.solve import solve_items, solve_users

REG, ALPHA, NU = 0.05, 0.3, 1.0


def _gradient(factor, observed, every, reg_row, alpha):
    """d/dx of Σ_observed (1 − ⟨x, o⟩)² + α Σ_every ⟨x, e⟩² + λ‖x‖², written from the loss."""
    return (
        -2 * ((1 - observed @ factor)[:, None] * observed).sum(axis=0)
        + 2 * alpha * ((every @ factor)[:, None] * every).sum(axis=0)
        + 2 * reg_row * factor
    )


def test_each_solve_minimizes_its_rows_frequency_scaled_loss():
    rng = np.random.default_rng(7)
    num_users, num_items, dim = 12, 30, 4
    table = rng.normal(size=(num_items, dim))
    logs = [np.sort(rng.choice(num_items, size, replace=False)) for size in (1, 3, 8, 20)]
    factors = solve_users(table, logs, reg=REG, unobserved_weight=ALPHA, reg_exponent=NU)
    for factor, items in zip(factors, logs, strict=True):
        reg_row = REG * (len(items) + ALPHA * num_items) ** NU  # a heavy user is shrunk more
        gradient = _gradient(factor, table[items], table, reg_row, ALPHA)
        assert np.abs(gradient).max() < 1e-9
    flat = solve_users(table, logs, reg=REG, unobserved_weight=ALPHA)
    assert not np.allclose(flat, factors)  # ν = 0 is the one λ for every row
    assert np.abs(_gradient(flat[2], table[logs[2]], table, REG, ALPHA)).max() < 1e-9

    # the item side, from the sums devices send: A_j = Σ u uᵀ, b_j = Σ u over the item's users
    users = rng.normal(size=(num_users, dim))
    member = rng.random((num_users, num_items)) < 0.3
    member[:, 0] = False  # an item nobody touched: its factor is 0 whatever its λ
    lhs = np.einsum("uj,ud,ue->jde", member, users, users)
    rhs = member.T.astype(float) @ users
    counts = member.sum(axis=0)
    items = solve_items(
        lhs,
        rhs,
        users.T @ users,
        reg=REG,
        unobserved_weight=ALPHA,
        reg_exponent=NU,
        counts=counts,
        num_users=num_users,
    )
    assert np.all(items[0] == 0)
    for j in range(num_items):
        reg_row = REG * (counts[j] + ALPHA * num_users) ** NU
        gradient = _gradient(items[j], users[member[:, j]], users, reg_row, ALPHA)
        assert np.abs(gradient).max() < 1e-9
    with pytest.raises(ValueError, match="pass counts"):
        solve_items(lhs, rhs, users.T @ users, reg=REG, unobserved_weight=ALPHA, reg_exponent=1)


def test_bad_exponents_are_refused_where_they_enter():
    for bad in (-0.5, 2.5, float("nan")):
        with pytest.raises(ValueError, match="reg_exponent"):
            AlsSpec(reg_exponent=bad)
        with pytest.raises(ValueError, match="reg_exponent"):
            AlgorithmSpec(name="als", reg_exponent=bad)
    # it travels in the round config, so every device solves with the server's ν
    settings = RoundSettings(algorithm="als", als=AlsSpec(reg=0.01, reg_exponent=1.0))
    assert parse_round_config(round_config(settings)).als.reg_exponent == 1.0


def test_the_flower_and_in_process_federations_apply_it_alike(tmp_path):
    small = [
        *TWELVE_USER_ALS,
        "algorithm.reg=0.01",
        "algorithm.reg_exponent=1",
        "model.embedding_dim=8",
    ]
    cfg = compose("simulate", small)
    run_simulate(cfg, tmp_path / "run")
    with np.load(tmp_path / "run" / "item_table.npz") as saved:
        flower = saved[ITEM_EMBEDDING]

    split = load_split(cfg.dataset)
    users = choose_users(split.train.num_users, 12, seed=0)
    _, scaled = run_als_in_process(split, cfg.algorithm, embedding_dim=8, rounds=2, users=users)
    np.testing.assert_allclose(flower, scaled[ITEM_EMBEDDING], atol=2e-4, rtol=1e-3)

    # the server's item step: round 2's table is each item's exact solve with its own λ_j =
    # reg·(n_j + α₀·12)^ν against the users' factors on round 1's table (solved apart here)
    _, first = run_als_in_process(split, cfg.algorithm, embedding_dim=8, rounds=1, users=users)
    table = np.asarray(first[ITEM_EMBEDDING], dtype=np.float64)
    logs = [np.unique(log) for log in per_user_items(split.train, split.train.num_users)]
    logs = [logs[user] for user in users]
    factors = solve_users(table, logs, reg=0.01, unobserved_weight=ALPHA, reg_exponent=1.0)
    gram = factors.T @ factors
    for item in range(split.train.num_items):
        mine = factors[[item in log for log in logs]]
        reg_row = 0.01 * (len(mine) + ALPHA * len(users))
        system = mine.T @ mine + ALPHA * gram + reg_row * np.eye(8)
        expected = np.linalg.solve(system, mine.sum(axis=0))
        np.testing.assert_allclose(scaled[ITEM_EMBEDDING][item], expected, atol=2e-4, rtol=1e-3)

    flat_spec = compose("simulate", [*small, "algorithm.reg_exponent=0"]).algorithm
    _, flat = run_als_in_process(split, flat_spec, embedding_dim=8, rounds=2, users=users)
    assert np.abs(flat[ITEM_EMBEDDING] - scaled[ITEM_EMBEDDING]).max() > 1e-2


def test_tune_offers_both_families_by_default():
    """Neither a flat nor a frequency-scaled λ wins on every log (docs/als.md): the default grid
    pools both, each at its own reg scale; a grid given on the command line replaces it."""
    base = AlgorithmSpec(name="als")
    points = [p for grid in grid_of(None) for p in candidates(base, 16, grid)]
    assert len(points) == 18
    by_exponent = {
        nu: sorted({p["reg"] for p in points if p["reg_exponent"] == nu}) for nu in (0, 1)
    }
    assert by_exponent == {0: [1.0, 3.0, 10.0], 1: [0.003, 0.01, 0.03]}
    assert grid_of({"reg": [1, 2]}) == [{"reg": [1, 2]}]
