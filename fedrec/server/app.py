"""The Flower ServerApp: set up the strategy, run the rounds, hand results to a callback."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrec.client.messages import RoundSettings, round_config
from fedrec.model.mf import MatrixFactorization
from fedrec.privacy.user_level import UserLevelPlan
from fedrec.server.strategy import RoundCallback, StrategySpec, make_strategy

logger = logging.getLogger("fedrec.server")


@dataclass
class ServerPlan:
    """Everything the server decides: sent settings, sampling, rounds, the initial table."""

    settings: RoundSettings
    strategy: StrategySpec
    num_items: int
    num_clients: int
    clients_per_round: int
    eval_clients_per_round: int
    rounds: int
    seed: int
    timeout_s: float = 3600.0
    global_bias_init: float = 0.0
    eval_every_rounds: int = 1
    user_level: UserLevelPlan | None = None  # DP-FedAvg (privacy modes user, both)
    # The cohort engine: this many simulation nodes, each holding a block of the clients, all
    # asked every round; they pick the round's users from ``extra_config`` (0: one per client).
    cohort_nodes: int = 0
    extra_config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.user_level is not None and self.settings.weight_by_examples:
            raise ValueError(
                "federation.weighting=examples cannot be used with user-level DP: the noise is "
                "calibrated to one clipped update per user with equal weight"
            )
        if not 1 <= self.clients_per_round <= self.num_clients:
            raise ValueError(
                f"clients_per_round={self.clients_per_round}; expected 1.."
                f"{self.num_clients} (the number of clients)"
            )
        if not 0 <= self.eval_clients_per_round <= self.num_clients:
            raise ValueError(
                f"eval_clients_per_round={self.eval_clients_per_round}; expected "
                f"0..{self.num_clients}"
            )
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}; expected >= 1")


def initial_item_arrays(plan: ServerPlan) -> dict[str, np.ndarray]:
    """A seeded random item table (zero biases): data-independent, so DP is unaffected."""
    generator = torch.Generator().manual_seed(plan.seed)
    model = MatrixFactorization(
        1,
        plan.num_items,
        plan.settings.model.embedding_dim,
        explicit=plan.settings.explicit,
        init_std=plan.settings.model.init_std,
        global_mean=plan.global_bias_init,
        generator=generator,
    )
    return model.item_state()


FinishCallback = Callable[[dict[str, np.ndarray]], None]


def run_federation(
    grid: Grid,
    plan: ServerPlan,
    *,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
) -> None:
    """Round 0 evaluation (the untrained baseline), then ``plan.rounds`` rounds."""
    random.seed(plan.seed)  # Flower samples clients with the random module
    strategy = make_strategy(
        plan.strategy,
        clients_per_round=plan.cohort_nodes or plan.clients_per_round,
        eval_clients_per_round=(plan.cohort_nodes if plan.eval_clients_per_round else 0)
        or plan.eval_clients_per_round,
        num_clients=plan.cohort_nodes or plan.num_clients,
        rounds=plan.rounds,
        eval_every_rounds=plan.eval_every_rounds,
        on_round=on_round,
        user_level=plan.user_level,
        seed=plan.seed,
    )
    initial = ArrayRecord({k: Array(v) for k, v in initial_item_arrays(plan).items()})
    if plan.eval_clients_per_round:
        # Round 0: the untrained model, scored the same way, as the baseline of the run.
        replies = grid.send_and_receive(
            strategy.configure_evaluate(
                0, initial, ConfigRecord(round_config(plan.settings) | plan.extra_config), grid
            ),
            timeout=plan.timeout_s,
        )
        strategy.aggregate_evaluate(0, replies)
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=plan.rounds,
        timeout=plan.timeout_s,
        train_config=ConfigRecord(round_config(plan.settings) | plan.extra_config),
        evaluate_config=ConfigRecord(round_config(plan.settings) | plan.extra_config),
    )
    final = result.arrays if len(result.arrays) else initial
    if on_finish is not None:
        on_finish({name: array.numpy() for name, array in final.items()})


def build_server_app(
    plan: ServerPlan,
    *,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, plan, on_round=on_round, on_finish=on_finish)

    return app
