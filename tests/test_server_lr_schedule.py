"""The learning-rate schedules: a cosine over the rounds for the server step and for the local
rate the server sends, applied per round."""

from __future__ import annotations

import math

import pytest

from fedrec.server.strategy import StrategySpec, config_for_round, make_strategy, server_lr_factor


def test_cosine_starts_at_one_and_decays_towards_zero() -> None:
    factors = [server_lr_factor("cosine", r, 4) for r in range(1, 5)]
    assert factors == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    )
    assert server_lr_factor("constant", 3, 4) == 1.0


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_the_strategy_scales_its_step_each_round(name: str) -> None:
    spec = StrategySpec(
        name=name, server_lr=400.0 if name == "fedavg" else 0.1, server_lr_schedule="cosine"
    )
    strategy = make_strategy(
        spec, clients_per_round=2, eval_clients_per_round=0, num_clients=2, rounds=2
    )
    for server_round, factor in ((1, 1.0), (2, 0.5), (1, 1.0)):
        strategy.apply_server_lr_schedule(server_round)
        if name == "fedadam":
            assert strategy.eta == pytest.approx(0.1 * factor)
        else:
            assert strategy.update_scale == pytest.approx(400.0 * factor)


def test_the_local_rate_sent_follows_its_own_schedule() -> None:
    sent = {"training.lr": 5.0, "training.epochs": 2}
    cosine = StrategySpec(local_lr_schedule="cosine")
    assert config_for_round(sent, cosine, 0, 4) == sent  # the baseline evaluation
    assert config_for_round(sent, cosine, 3, 4) == {"training.lr": 2.5, "training.epochs": 2}
    assert config_for_round(sent, StrategySpec(), 3, 4) == sent
    assert sent == {"training.lr": 5.0, "training.epochs": 2}  # a copy, never the original
    assert all(config_for_round(sent, cosine, r, 4)["training.lr"] > 0 for r in range(1, 5))


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="server_lr_schedule"):
        StrategySpec(server_lr_schedule="linear")
    with pytest.raises(ValueError, match="local_lr_schedule"):
        StrategySpec(local_lr_schedule="step")
