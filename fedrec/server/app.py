"""The Flower ServerApp: set up the strategy, run the rounds, hand results to a callback.

The round loop is fedrec's own rather than ``Strategy.start``: it is the same train/evaluate
sequence, but it can begin at a later round (a resumed run) and checkpoints after every round
(:mod:`fedrec.server.checkpoint`).
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedrec.client.messages import RoundSettings, round_config
from fedrec.model.mf import random_item_arrays
from fedrec.privacy.user_level import UserLevelPlan
from fedrec.server.checkpoint import ServerCheckpoint, capture, restore, save_checkpoint
from fedrec.server.defenses import DefenseSpec
from fedrec.server.strategy import (
    RoundCallback,
    RoundRecord,
    StrategySpec,
    config_for_round,
    make_strategy,
)

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
    min_replies: int = 1  # fewer accepted updates: the round is skipped (see make_strategy)
    checkpoint_path: str | Path | None = None  # written after every round
    resume: ServerCheckpoint | None = None  # continue after this checkpoint's round
    crash_after_replies_of_round: int = 0  # fault injection: SIGKILL this process (0: never)
    defense: DefenseSpec | None = None  # a robust aggregation rule (None or name none: the mean)

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
        if not 0 <= self.min_replies <= self.clients_per_round:
            raise ValueError(
                f"min_replies={self.min_replies}; expected 0..{self.clients_per_round} "
                "(clients_per_round)"
            )


def initial_item_arrays(plan: ServerPlan) -> dict[str, np.ndarray]:
    """The plan's seeded random item table (see :func:`random_item_arrays`)."""
    return random_item_arrays(
        plan.num_items,
        plan.settings.model.embedding_dim,
        init_std=plan.settings.model.init_std,
        seed=plan.seed,
        explicit=plan.settings.explicit,
        global_mean=plan.global_bias_init,
    )


FinishCallback = Callable[[dict[str, np.ndarray]], None]


def run_federation(
    grid: Grid,
    plan: ServerPlan,
    *,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
) -> None:
    """Round 0 evaluation (the untrained baseline), then ``plan.rounds`` rounds; or, with
    ``plan.resume``, the rounds after the checkpoint's. Checkpoints after every round."""
    random.seed(plan.seed)  # Flower samples clients with the random module
    rows: list[dict[str, float]] = []

    def record_round(record: RoundRecord) -> None:
        rows.append(record.row())
        if on_round is not None:
            on_round(record)

    strategy = make_strategy(
        plan.strategy,
        clients_per_round=plan.cohort_nodes or plan.clients_per_round,
        eval_clients_per_round=(plan.cohort_nodes if plan.eval_clients_per_round else 0)
        or plan.eval_clients_per_round,
        num_clients=plan.cohort_nodes or plan.num_clients,
        rounds=plan.rounds,
        eval_every_rounds=plan.eval_every_rounds,
        on_round=record_round,
        user_level=plan.user_level,
        seed=plan.seed,
        min_replies=plan.min_replies,
        defense=plan.defense,
    )
    sent_config = round_config(plan.settings) | plan.extra_config

    def config(server_round: int) -> ConfigRecord:
        # A new record for every request: Flower's strategies write "server-round" into the
        # record they are given, and in simulation a message still queued (behind a straggler)
        # holds that record by reference, so reusing one would relabel it with a later round.
        return ConfigRecord(config_for_round(sent_config, plan.strategy, server_round, plan.rounds))

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        if plan.checkpoint_path is not None:
            items = {name: array.numpy() for name, array in arrays.items()}
            save_checkpoint(plan.checkpoint_path, capture(strategy, server_round, items, rows))

    if plan.resume is not None:
        restore(strategy, plan.resume)
        rows.extend(plan.resume.rows)
        arrays = ArrayRecord({k: Array(v) for k, v in plan.resume.item_arrays.items()})
        first_round = plan.resume.server_round + 1
        logger.info("resuming after round %d of %d", plan.resume.server_round, plan.rounds)
    else:
        arrays = ArrayRecord({k: Array(v) for k, v in initial_item_arrays(plan).items()})
        first_round = 1
        if plan.eval_clients_per_round:
            # Round 0: the untrained model, scored the same way, as the baseline of the run.
            replies = grid.send_and_receive(
                strategy.configure_evaluate(0, arrays, config(0), grid),
                timeout=plan.timeout_s,
            )
            strategy.aggregate_evaluate(0, replies)
        checkpoint(0, arrays)
    for server_round in range(first_round, plan.rounds + 1):
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, arrays, config(server_round), grid),
            timeout=plan.timeout_s,
        )
        if server_round == plan.crash_after_replies_of_round:
            logger.warning("fault injection: the server dies in round %d", server_round)
            os.kill(os.getpid(), signal.SIGKILL)
        updated, _ = strategy.aggregate_train(server_round, replies)
        if updated is not None:
            arrays = updated
        replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, config(server_round), grid),
            timeout=plan.timeout_s,
        )
        strategy.aggregate_evaluate(server_round, replies)
        checkpoint(server_round, arrays)
    if on_finish is not None:
        on_finish({name: array.numpy() for name, array in arrays.items()})


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
