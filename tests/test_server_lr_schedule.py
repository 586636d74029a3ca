"""The learning-rate schedules: a cosine over the rounds for the server step and for the local
rate the server sends, applied per round."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.federation.server_step import (
    SERVER_STEPS,
    StrategySpec,
    config_for_round,
    server_lr_factor,
)


def test_cosine_starts_at_one_and_decays_towards_zero() -> None:
    factors = [server_lr_factor("cosine", r, 4) for r in range(1, 5)]
    assert factors == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    assert server_lr_factor("constant", 3, 4) == 1.0


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_the_server_step_scales_with_the_schedule_each_round(name: str) -> None:
    lr = 400.0 if name == "fedavg" else 0.1
    cosine = StrategySpec(name=name, server_lr=lr, server_lr_schedule="cosine")
    constant = StrategySpec(name=name, server_lr=lr)
    current = {"w": np.zeros(3, dtype=np.float64)}
    update = {"w": np.array([1.0, -2.0, 0.5])}
    for server_round, factor in ((1, 1.0), (2, 0.5)):
        scheduled = SERVER_STEPS.get(name)(cosine, 2)
        plain = SERVER_STEPS.get(name)(constant, 2)
        for r in range(1, server_round):  # same moments before the round measured
            scheduled.apply(r, current, update)
            plain.apply(r, current, update)
        moved = scheduled.apply(server_round, current, update)["w"]
        full = plain.apply(server_round, current, update)["w"]
        np.testing.assert_allclose(moved, factor * full)


def test_the_local_rate_sent_follows_its_own_schedule() -> None:
    sent = {"training.lr": 5.0, "training.epochs": 2}
    cosine = StrategySpec(local_lr_schedule="cosine")
    assert config_for_round(sent, cosine, 0, 4) == sent | {"server-round": 0}  # the baseline
    assert config_for_round(sent, cosine, 3, 4) == {
        "training.lr": 2.5,
        "training.epochs": 2,
        "server-round": 3,
    }
    assert config_for_round(sent, StrategySpec(), 3, 4) == sent | {"server-round": 3}
    assert sent == {"training.lr": 5.0, "training.epochs": 2}  # a copy, never the original
    assert all(config_for_round(sent, cosine, r, 4)["training.lr"] > 0 for r in range(1, 5))


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="server_lr_schedule"):
        StrategySpec(server_lr_schedule="linear")
    with pytest.raises(ValueError, match="local_lr_schedule"):
        StrategySpec(local_lr_schedule="step")
