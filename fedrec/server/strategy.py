"""Flower strategies made fit for fedrec: updates are deltas, validated, and every round is counted.

The devices send the *change* of the item side. Before a reply reaches Flower's averaging, the
mixin below checks it (names, shapes, dtypes, finiteness, optional norm bound) and turns it into
``current + delta``, the form every FedAvg-family strategy aggregates (FedAdam and FedYogi then
compute their pseudo-gradient from it). Failures and rejections are counted per round, because
Flower only logs them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi

from fedrec.client.messages import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    DECLINED,
    METRICS_KEY,
    ROUND_REFUSED,
)
from fedrec.eval.metrics import average_over_users
from fedrec.privacy.user_level import UserLevelPlan
from fedrec.registry import Registry
from fedrec.server.defenses import DefenseSpec, aggregate
from fedrec.server.privacy_tally import PrivacyTally
from fedrec.server.user_dp import UserLevelDPMixin, server_noise_rng
from fedrec.server.validation import ExpectedArrays, expected_arrays, rejection_reason

logger = logging.getLogger("fedrec.server")

STRATEGIES: Registry[type] = Registry("strategy")
STRATEGIES.register("fedavg")(FedAvg)
STRATEGIES.register("fedadam")(FedAdam)
STRATEGIES.register("fedyogi")(FedYogi)


@dataclass
class StrategySpec:
    """Mirrors ``configs/strategy/*.yaml``.

    ``server_lr``: for FedAdam/FedYogi their eta; for FedAvg the factor on the averaged update
    (1 is plain FedAvg; the number of clients per round turns the mean of the item updates into
    their sum, the scale at which a centralized epoch would move the item table).
    """

    name: str = "fedavg"
    server_lr: float = 1.0
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    max_update_norm: float | None = None
    # cosine: round r of R uses server_lr · ½(1 + cos(π(r − 1)/R)), landing the item table on a
    # minimum instead of wherever a constant step leaves it (as training.lr_schedule does).
    server_lr_schedule: str = "constant"
    # The same schedule for the local learning rate the server sends each round
    # (federation.local.lr): late rounds then only fine-tune the users' own embeddings, which
    # the devices otherwise keep moving at full rate right up to the final evaluation.
    local_lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        STRATEGIES.get(self.name)
        if not self.server_lr > 0:
            raise ValueError(f"strategy.server_lr={self.server_lr}; expected > 0")
        if self.server_lr_schedule not in SERVER_LR_SCHEDULES:
            raise ValueError(
                f"strategy.server_lr_schedule='{self.server_lr_schedule}'; accepted: "
                f"{', '.join(SERVER_LR_SCHEDULES)}"
            )
        if self.local_lr_schedule not in SERVER_LR_SCHEDULES:
            raise ValueError(
                f"strategy.local_lr_schedule='{self.local_lr_schedule}'; accepted: "
                f"{', '.join(SERVER_LR_SCHEDULES)}"
            )


SERVER_LR_SCHEDULES = ("constant", "cosine")


def server_lr_factor(schedule: str, server_round: int, rounds: int) -> float:
    """The factor on a learning rate in ``server_round`` (1-based) of ``rounds``; positive in
    every round (the last one's cosine factor is small, not zero)."""
    if schedule == "cosine" and rounds > 0:
        return 0.5 * (1 + math.cos(math.pi * (server_round - 1) / rounds))
    return 1.0


def config_for_round(sent_config: dict, spec: StrategySpec, server_round: int, rounds: int) -> dict:
    """A copy of the flat round config with this round's local learning rate
    (``strategy.local_lr_schedule``); round 0 (the baseline evaluation) keeps the base rate."""
    config = dict(sent_config)
    if server_round >= 1 and "training.lr" in config:
        factor = server_lr_factor(spec.local_lr_schedule, server_round, rounds)
        config["training.lr"] = float(config["training.lr"]) * factor
    return config


@dataclass
class RoundRecord:
    """What happened in one round, as the server saw it."""

    server_round: int
    sampled: int = 0
    accepted: int = 0
    failed: int = 0
    rejected: int = 0
    budget_exhausted: int = 0
    declined: int = 0  # users who declined the round (no consent, nothing consented to train on)
    timed_out: int = 0  # sampled nodes whose reply did not arrive within the round's timeout
    refused: int = 0  # devices that refused the server's request (bad settings or table)
    skipped: int = 0  # 1: fewer than min_replies updates were accepted; the model is unchanged
    train_loss: float = float("nan")
    evaluation: dict[str, float] = field(default_factory=dict)
    epsilon_min: float = 0.0
    epsilon_max: float = 0.0
    epsilon_median: float = 0.0
    clients_with_epsilon: int = 0
    users_at_budget: int = 0  # distinct users stopped by their budget so far in the run
    user_level_epsilon: float | None = None  # the server's user-level ε (modes user, both)
    seconds: float = 0.0

    def outcome_counts(self) -> str:
        """Why updates are missing, for the round's log line: the three failure counts always,
        the devices' own refusals only when there are any (a table every device refuses stalls
        the run, and the server's log must say so, not only the devices')."""
        parts = [
            f"{self.failed} failed",
            f"{self.timed_out} timed out",
            f"{self.rejected} rejected",
        ]
        for count, words in (
            (self.refused, "refused the request (see the devices' logs)"),
            (self.declined, "declined"),
            (self.budget_exhausted, "out of budget"),
        ):
            if count:
                parts.append(f"{count} {words}")
        return ", ".join(parts)

    def row(self) -> dict[str, float]:
        flat = {k: v for k, v in self.__dict__.items() if k != "evaluation" and v is not None}
        return {**flat, **self.evaluation}


RoundCallback = Callable[[RoundRecord], None]


class ValidatedDeltaMixin:
    """Put before a FedAvg-family base: ``class X(ValidatedDeltaMixin, FedAvg)``."""

    def __init__(
        self,
        *args,
        on_round: RoundCallback | None = None,
        max_update_norm: float | None = None,
        update_scale: float = 1.0,
        eval_every_rounds: int = 1,
        last_round: int = 0,
        min_replies: int = 0,
        server_lr_schedule: str = "constant",
        defense: DefenseSpec | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        # A robust rule over the accepted deltas (fedrec.server.defenses); None: the base's mean.
        self.defense = defense if defense is not None and defense.name != "none" else None
        self.server_lr_schedule = server_lr_schedule
        self._base_update_scale = update_scale
        self._base_eta = getattr(self, "eta", None)  # FedAdam/FedYogi's server learning rate
        self.min_replies = min_replies
        self._messages_sent = 0
        self.on_round = on_round
        self.update_scale = update_scale
        self.eval_every_rounds = max(1, eval_every_rounds)
        self.last_round = last_round
        self.max_update_norm = max_update_norm
        self.global_arrays: dict[str, np.ndarray] = {}
        self.expected: ExpectedArrays = {}
        self.privacy_tally = PrivacyTally()
        self.record = RoundRecord(0)
        self._round_started = time.perf_counter()

    def apply_server_lr_schedule(self, server_round: int) -> None:
        """Set this round's server step: FedAvg's update scale, or FedAdam/FedYogi's eta."""
        factor = server_lr_factor(self.server_lr_schedule, server_round, self.last_round)
        self.update_scale = self._base_update_scale * factor
        if self._base_eta is not None:
            self.eta = self._base_eta * factor

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_started = time.perf_counter()
        self.apply_server_lr_schedule(server_round)
        self.global_arrays = {name: array.numpy() for name, array in arrays.items()}
        self.expected = expected_arrays(self.global_arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.record = RoundRecord(server_round, sampled=len(messages))
        self._messages_sent = len(messages)
        # Flower waits until min_available_nodes are connected before it samples. Every node is
        # awaited once, at the start; afterwards a node that died must not stall the federation,
        # so a round needs only as many live nodes as it samples.
        self.min_available_nodes = min(self.min_available_nodes, self.min_train_nodes)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Every ``eval_every_rounds`` rounds, and always in round 0 and the last round."""
        if server_round % self.eval_every_rounds and server_round != self.last_round:
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        # Flower returns what arrived before the timeout; the rest are stragglers or gone.
        self.record.timed_out = max(0, self._messages_sent - len(replies))
        if self.record.timed_out:
            logger.warning(
                "round %d: %d of %d sampled nodes did not reply within the timeout",
                server_round,
                self.record.timed_out,
                self._messages_sent,
            )
        accepted, losses = [], []
        cohort_users: dict[str, int] | None = None
        for reply in replies:
            if reply.has_error():
                self.record.failed += 1
                logger.warning(
                    "round %d: node %d failed: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            metrics = reply.content.metric_records.get(METRICS_KEY, {})
            if "users_sampled" in metrics:  # a cohort node: it speaks for many users
                cohort_users = self._count_cohort_users(metrics, cohort_users)
                if not reply.content.array_records:
                    continue
            elif any(metrics.get(key) for key in DECLINED) and not reply.content.array_records:
                self.record.declined += 1  # the user did not consent: nothing was trained
                continue
            elif metrics.get(ROUND_REFUSED) and not reply.content.array_records:
                self.record.refused += 1  # the device's log says why; nothing was trained
                logger.warning(
                    "round %d: node %d refused the round", server_round, reply.metadata.src_node_id
                )
                continue
            elif metrics.get(BUDGET_EXHAUSTED) and not reply.content.array_records:
                self.record.budget_exhausted += 1
                self.privacy_tally.report(
                    reply.metadata.src_node_id,
                    float(metrics.get("epsilon", 0.0)),
                    budget_exhausted=True,
                )
                continue
            reason = rejection_reason(reply.content, self.expected, self.max_update_norm)
            if reason is not None:
                self.record.rejected += 1
                logger.warning(
                    "round %d: rejected the update of node %d: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reason,
                )
                continue
            metrics = reply.content[METRICS_KEY]
            if "users_sampled" in metrics:
                losses += [float(metrics["train_loss"])] * int(metrics["users_trained"])
                # Flower averages reply metrics element-wise; the per-user lists (already
                # recorded above) differ in length between nodes, so only scalars go on.
                reply.content[METRICS_KEY] = MetricRecord(
                    {k: v for k, v in metrics.items() if not isinstance(v, list)}
                )
                accepted.append(reply)
                continue
            if "epsilon" in metrics:
                self.privacy_tally.report(reply.metadata.src_node_id, float(metrics["epsilon"]))
            if "train_loss" in metrics:
                losses.append(float(metrics["train_loss"]))
            accepted.append(reply)
        self.record.accepted = len(accepted)
        if cohort_users is not None:  # count users, not nodes; a node's rejection is its users'
            self.record.sampled = cohort_users["sampled"]
            self.record.accepted = cohort_users["trained"] if accepted else 0
            self.record.rejected += cohort_users["rejected"]
            self.record.failed += cohort_users["failed"]
            self.record.budget_exhausted += cohort_users["budget_exhausted"]
            self.record.refused += cohort_users["refused"]
        self.record.train_loss = float(np.mean(losses)) if losses else float("nan")
        self.privacy_tally.fill(self.record)
        if self.record.accepted < self.min_replies:
            self.record.skipped = 1
            logger.warning(
                "round %d skipped: %d accepted updates, fewer than min_replies=%d (%s); the "
                "model is unchanged",
                server_round,
                self.record.accepted,
                self.min_replies,
                self.record.outcome_counts(),
            )
            return None, None
        return self.aggregate_updates(server_round, accepted)

    def _count_cohort_users(self, metrics, counts: dict[str, int] | None) -> dict[str, int]:
        counts = counts or dict.fromkeys(
            ("sampled", "trained", "rejected", "failed", "budget_exhausted", "refused"), 0
        )
        for name in counts:
            counts[name] += int(metrics[f"users_{name}"])
        users, values = metrics["epsilon_users"], metrics["epsilon_values"]
        stopped = {int(user) for user in metrics.get("budget_exhausted_users", [])}
        for user, epsilon in zip(users, values, strict=True):
            self.privacy_tally.report(
                ("user", int(user)), float(epsilon), budget_exhausted=int(user) in stopped
            )
        return counts

    def aggregate_updates(self, server_round: int, accepted: list[Message]):
        """Average the accepted deltas with the base strategy, each turned into
        ``current + update_scale · delta`` (the form FedAvg-family strategies aggregate).
        User-level DP replaces this step (:class:`~fedrec.server.user_dp.UserLevelDPMixin`)."""
        if not accepted:
            logger.warning("round %d: no acceptable update; the model is unchanged", server_round)
            self.record.skipped = 1
            return None, None
        if self.defense is not None:
            return self._aggregate_robustly(server_round, accepted)
        for reply in accepted:
            delta = reply.content[ARRAYS_KEY]
            reply.content[ARRAYS_KEY] = ArrayRecord(
                {
                    name: Array(self.global_arrays[name] + self.update_scale * delta[name].numpy())
                    for name in self.global_arrays
                }
            )
        return super().aggregate_train(server_round, accepted)

    def _aggregate_robustly(self, server_round: int, accepted: list[Message]):
        """The defense's rule over the deltas (unweighted, as Flower's robust strategies), then
        the base strategy's step from it: every reply is given ``current + update_scale ·
        rule(deltas)``, so FedAvg's weighted mean returns exactly that table (up to rounding),
        FedAdam/FedYogi take their pseudo-gradient from it, and train metrics are still
        averaged over all accepted replies."""
        deltas = [
            {name: reply.content[ARRAYS_KEY][name].numpy() for name in self.global_arrays}
            for reply in accepted
        ]
        step = aggregate(deltas, self.defense)
        robust = {
            name: (current + self.update_scale * step[name]).astype(current.dtype, copy=False)
            for name, current in self.global_arrays.items()
        }
        for reply in accepted:
            reply.content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in robust.items()})
        return super().aggregate_train(server_round, accepted)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        per_user = []
        for reply in replies:
            if reply.has_error():
                logger.warning(
                    "round %d: evaluation failed on node %d: %s",
                    server_round,
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
                continue
            if METRICS_KEY not in reply.content.metric_records:
                logger.warning(
                    "round %d: evaluation reply of node %d has no '%s' record; ignored",
                    server_round,
                    reply.metadata.src_node_id,
                    METRICS_KEY,
                )
                continue
            metrics = dict(reply.content[METRICS_KEY])
            if "users_evaluated" in metrics:  # a cohort node: one list entry per user
                lists = {k[len("user.") :]: v for k, v in metrics.items() if k.startswith("user.")}
                for row in range(int(metrics["users_evaluated"])):
                    values = {name: float(v[row]) for name, v in lists.items()}
                    per_user.append({k: v for k, v in values.items() if not np.isnan(v)})
                continue
            if metrics.pop("evaluated", 0):
                metrics.pop("num-examples", None)
                per_user.append(metrics)
        evaluation = average_over_users(per_user) if per_user else {}
        if server_round == self.record.server_round:
            self.record.evaluation = evaluation
            self.record.seconds = time.perf_counter() - self._round_started
            if self.on_round is not None:
                self.on_round(self.record)
        return MetricRecord(evaluation) if evaluation else None


def make_strategy(
    spec: StrategySpec,
    *,
    clients_per_round: int,
    eval_clients_per_round: int,
    num_clients: int,
    rounds: int,
    eval_every_rounds: int = 1,
    on_round: RoundCallback | None = None,
    user_level: UserLevelPlan | None = None,
    seed: int = 0,
    min_replies: int = 0,
    defense: DefenseSpec | None = None,
) -> FedAvg:
    """The configured FedAvg-family strategy behind the validated-delta mixin; with a
    ``user_level`` plan, DP-FedAvg in front of it (noise and client sampling seeded by ``seed``).

    ``min_replies``: a round with fewer accepted updates is skipped (model unchanged). Not with
    user-level DP: there every round releases its noisy mean, however few took part, because
    whether a round is released must not depend on who was sampled.

    ``defense``: a robust rule (:mod:`fedrec.server.defenses`) in place of the mean of the
    accepted deltas; each reply must be one user's update (not a cohort node's mean), and not
    with user-level DP, whose noise is calibrated to the mean of clipped updates.
    """
    base = STRATEGIES.get(spec.name)
    if user_level is not None and defense is not None and defense.name != "none":
        raise ValueError(
            f"defense={defense.name} cannot be combined with user-level DP: the server's noise "
            "is calibrated to the mean of clipped updates; use defense=none"
        )
    mixins: tuple[type, ...] = (ValidatedDeltaMixin,)
    extra: dict = {}
    if user_level is not None:
        mixins = (UserLevelDPMixin, *mixins)
        extra = dict(user_level=user_level, num_clients=num_clients, rng=server_noise_rng(seed))
    validated = type(f"Validated{base.__name__}", (*mixins, base), {})
    options = dict(
        fraction_train=clients_per_round / num_clients,
        fraction_evaluate=eval_clients_per_round / num_clients,
        min_train_nodes=clients_per_round,
        min_evaluate_nodes=eval_clients_per_round,
        min_available_nodes=num_clients,
    )
    update_scale = 1.0
    if base is FedAvg:
        update_scale = spec.server_lr
    else:
        options |= dict(eta=spec.server_lr, beta_1=spec.beta_1, beta_2=spec.beta_2, tau=spec.tau)
    return validated(
        on_round=on_round,
        max_update_norm=spec.max_update_norm,
        update_scale=update_scale,
        eval_every_rounds=eval_every_rounds,
        last_round=rounds,
        min_replies=0 if user_level is not None else min_replies,
        server_lr_schedule=spec.server_lr_schedule,
        defense=defense,
        **options,
        **extra,
    )
