"""The one round loop: every runner (a Flower simulation, a deployment, SecAgg+, the in-process
audits, poisoning studies and tuning) is this loop over a different :class:`Transport`.

Per round: sample the users (:mod:`fedrec.federation.sampling`), send them the current item table
and the round's settings through the transport, hand the replies to the server rule
(:class:`~fedrec.federation.rule.ServerRule`), evaluate every ``eval_every_rounds`` rounds (and
in round 0, the untrained baseline, and in the last round), record the round, checkpoint. A run
can start after a checkpoint's round (``resume``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedrec.eval.metrics import average_over_users
from fedrec.federation.als_rule import AlsRule, AlsServerPlan
from fedrec.federation.checkpoint import ServerCheckpoint, capture, restore, save_checkpoint
from fedrec.federation.defenses import DefenseSpec
from fedrec.federation.record import RoundCallback, RoundRecord
from fedrec.federation.rule import ServerRule
from fedrec.federation.sampling import sample_users
from fedrec.federation.server_step import StrategySpec, config_for_round
from fedrec.privacy.user_level import UserLevelPlan
from fedrec.protocol.replies import NodeReply
from fedrec.protocol.settings import RoundSettings, round_config

logger = logging.getLogger("fedrec.server")

Arrays = dict[str, np.ndarray]


class Transport(Protocol):
    """How the server reaches its users. Users are indices ``0..population-1``."""

    population: int

    def train(
        self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict
    ) -> list[NodeReply]:
        """Every reply to the round's training request (a node that did not answer in time is
        a reply with ``timed_out``; one that failed, a reply with ``error``)."""

    def evaluate(
        self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict
    ) -> list[dict[str, float]]:
        """One metrics dict per user who scored the table."""


RoundObserver = Callable[[int, Arrays, list[NodeReply], Arrays], None]
"""Sees each round's sent table, the replies and the table after the round (the server's seat:
an audit's attacks, a poisoning study's exposure)."""


@dataclass
class FederationPlan:
    """Everything the server decides: sent settings, sampling, rounds, the server rule."""

    settings: RoundSettings
    strategy: StrategySpec
    rounds: int
    clients_per_round: int
    eval_clients_per_round: int
    seed: int
    eval_every_rounds: int = 1
    user_level: UserLevelPlan | None = None  # DP-FedAvg (privacy modes user, both)
    min_replies: int = 1  # fewer accepted updates: the round is skipped
    defense: DefenseSpec | None = None  # a robust aggregation rule (None or none: the mean)
    checkpoint_path: str | Path | None = None  # written after every round
    resume: ServerCheckpoint | None = None  # continue after this checkpoint's round
    crash_after_replies_of_round: int = 0  # fault injection: SIGKILL this process (0: never)
    als: AlsServerPlan | None = None  # federated (DP-)ALS (settings.algorithm == "als")

    def __post_init__(self) -> None:
        if self.user_level is not None and self.settings.weight_by_examples:
            raise ValueError(
                "federation.weighting=examples cannot be used with user-level DP: the noise is "
                "calibrated to one clipped update per user with equal weight"
            )
        if (self.als is not None) != (self.settings.algorithm == "als"):
            raise ValueError("an ALS run needs settings.algorithm='als' and an ALS server plan")
        if self.als is not None and self.user_level is not None:
            raise ValueError("DP-ALS has its own accountant (als.privacy), not DP-FedAvg's")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}; expected >= 1")

    def check_population(self, population: int) -> None:
        """The counts against the users the transport found."""
        if not 1 <= self.clients_per_round <= population:
            raise ValueError(
                f"clients_per_round={self.clients_per_round}; expected 1..{population} "
                "(the number of clients)"
            )
        if not 0 <= self.eval_clients_per_round <= population:
            raise ValueError(
                f"eval_clients_per_round={self.eval_clients_per_round}; expected 0..{population}"
            )
        if not 0 <= self.min_replies <= self.clients_per_round:
            raise ValueError(
                f"min_replies={self.min_replies}; expected 0..{self.clients_per_round} "
                "(clients_per_round)"
            )

    def rule(self) -> ServerRule:
        if self.als is not None:
            return AlsRule(
                self.als, rounds=self.rounds, min_replies=self.min_replies, seed=self.seed
            )
        return ServerRule(
            self.strategy,
            rounds=self.rounds,
            user_level=self.user_level,
            defense=self.defense,
            min_replies=self.min_replies,
            seed=self.seed,
        )

    def evaluates(self, server_round: int) -> bool:
        every = max(1, self.eval_every_rounds)
        last = server_round == self.rounds
        return self.eval_clients_per_round > 0 and (server_round % every == 0 or last)


def run_rounds(
    transport: Transport,
    plan: FederationPlan,
    initial: Arrays,
    *,
    on_round: RoundCallback | None = None,
    observe: RoundObserver | None = None,
    rule: ServerRule | None = None,
) -> Arrays:
    """Round 0's evaluation (the untrained baseline), then ``plan.rounds`` rounds, or, with
    ``plan.resume``, the rounds after the checkpoint's. Returns the final item table."""
    population = transport.population
    plan.check_population(population)
    private = plan.als.privacy if plan.als is not None else None
    if private is not None and private.distributed and not getattr(transport, "adds_shares", False):
        raise ValueError(
            "distributed DP-ALS (algorithm.noise_shares > 0) needs devices that add noise "
            "shares under secure aggregation (secure_aggregation=secaggplus); on this transport "
            "the server would add too little noise. Use algorithm.noise_shares=0 (central noise)"
        )
    rule = rule or plan.rule()
    sent_config = round_config(plan.settings)
    rows: list[dict[str, float]] = []
    if plan.resume is not None:
        restore(rule, plan.resume)
        rows.extend(plan.resume.rows)
        arrays = {k: np.asarray(v) for k, v in plan.resume.item_arrays.items()}
        first_round = plan.resume.server_round + 1
        logger.info("resuming after round %d of %d", plan.resume.server_round, plan.rounds)
    else:
        arrays = {k: np.asarray(v) for k, v in initial.items()}
        first_round = 1

    def config(server_round: int) -> dict:
        base = config_for_round(sent_config, plan.strategy, server_round, plan.rounds)
        return rule.round_config(server_round, base)

    def finish(record: RoundRecord, started: float) -> None:
        record.seconds = time.perf_counter() - started
        rows.append(record.row())
        if on_round is not None:
            on_round(record)
        if plan.checkpoint_path is not None:
            checkpoint = capture(rule, record.server_round, arrays, rows)
            save_checkpoint(plan.checkpoint_path, checkpoint)

    def evaluate(server_round: int, record: RoundRecord) -> None:
        users = sample_users(
            plan.seed, server_round, population, plan.eval_clients_per_round, evaluation=True
        )
        per_user = transport.evaluate(server_round, users, arrays, config(server_round))
        record.evaluation = average_over_users(per_user) if per_user else {}

    if first_round == 1 and plan.eval_clients_per_round:
        started = time.perf_counter()
        baseline = RoundRecord(0)  # the untrained model, scored the same way: the run's baseline
        evaluate(0, baseline)
        finish(baseline, started)
    elif first_round == 1 and plan.checkpoint_path is not None:
        save_checkpoint(plan.checkpoint_path, capture(rule, 0, arrays, rows))
    for server_round in range(first_round, plan.rounds + 1):
        started = time.perf_counter()
        users = sample_users(
            plan.seed,
            server_round,
            population,
            plan.clients_per_round,
            poisson=plan.user_level is not None,
        )
        record = RoundRecord(server_round, sampled=len(users))
        replies = []
        if len(users):
            replies = transport.train(server_round, users, arrays, config(server_round))
        if server_round == plan.crash_after_replies_of_round:
            logger.warning("fault injection: the server dies in round %d", server_round)
            os.kill(os.getpid(), signal.SIGKILL)
        annotate = getattr(transport, "annotate", None)
        if annotate is not None:
            annotate(record)
        sent_arrays = arrays
        updated = rule.apply(server_round, arrays, replies, record)
        if updated is not None:
            arrays = updated
        if observe is not None:
            observe(server_round, sent_arrays, replies, arrays)
        if record.timed_out:
            logger.warning(
                "round %d: %d of %d sampled users' replies did not arrive within the timeout",
                server_round,
                record.timed_out,
                record.sampled,
            )
        if plan.evaluates(server_round):
            evaluate(server_round, record)
        finish(record, started)
    return arrays
