"""Secure aggregation with Flower's SecAgg+: the server learns only the sum of a round's updates.

Why the legacy path: in flwr 1.41 SecAgg+ exists only as
``flwr.server.workflow.SecAggPlusWorkflow``, which runs inside the legacy ``DefaultWorkflow`` with
a ``LegacyContext`` and calls a legacy ``flwr.server.strategy`` strategy
(``configure_fit``/``aggregate_fit`` with ``FitRes``); the new ``flwr.serverapp.strategy``
strategies fail inside it (../shared/STACK.md). So this module has its
own small legacy strategy, :class:`SecAggDeltaFedAvg`, that applies fedrec's server rule
(``items += server_lr · mean delta``, with ``strategy.server_lr_schedule``; the local rate sent
follows ``strategy.local_lr_schedule``) to the unmasked mean, and reports rounds through the same
:class:`~fedrec.server.strategy.RoundRecord` callback as the plain path, so
``metrics.csv``/``summary.json`` keep their shape. Legacy pieces used, all forced by the
workflow: ``LegacyContext``, ``ServerConfig``, ``DefaultWorkflow``, the legacy ``FedAvg`` base
and ``Parameters``/``FitRes``/``EvaluateRes``. Nothing deprecated is used where a current
piece exists (the app is a ``ServerApp`` with ``@app.main()``, not ``ServerApp(strategy=...)``).

What the server sees per device: masked integers (uniform modulo ``modulus_range``) and the scalar
metrics in the clear (loss, ε, flags, ``num-examples``). After unmasking it has only the
weighted mean of the round's updates, clipped coordinate-wise to ``±clipping_range`` and
quantized to ``2·clipping_range/quantization_range``. Hence what the plain path checks per update
cannot be checked here: names/shapes/dtypes/finiteness and ``strategy.max_update_norm`` apply to
each update there, but only to the unmasked mean here (a hostile device can still move the mean by
up to ``clipping_range`` per coordinate divided by the round's number of devices). Also not on this
path: user-level DP (its clipping is per update at the server), the cohort engine (a node sums many
users), example weighting, FedAdam/FedYogi, per-round checkpoints and ``resume=``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Context
from flwr.common import (
    EvaluateIns,
    FitIns,
    Parameters,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import Grid, ServerApp

from fedrec.client.messages import BUDGET_EXHAUSTED, DECLINED, NUM_EXAMPLES, ROUND_REFUSED
from fedrec.client.messages import round_config as flat_round_config
from fedrec.client.secagg_app import ARRAY_NAMES_KEY, CLIPPED_VALUES
from fedrec.eval.metrics import average_over_users
from fedrec.server.privacy_tally import PrivacyTally
from fedrec.server.strategy import (
    RoundCallback,
    RoundRecord,
    StrategySpec,
    config_for_round,
    server_lr_factor,
)

logger = logging.getLogger("fedrec.server")

SECURE_AGGREGATIONS = ("none", "secaggplus")
SERVER_SAW = "the unmasked weighted mean of each round's updates only (SecAgg+), never one update"


@dataclass
class SecureAggregationSpec:
    """Mirrors ``configs/secure_aggregation/*.yaml``; the SecAgg+ keys are Flower's
    ``SecAggPlusWorkflow`` arguments.

    ``num_shares``/``reconstruction_threshold``: a value <= 1 is a share of the round's sampled
    devices (resp. of ``num_shares``), a larger one a count. A round survives as long as every
    device keeps ``reconstruction_threshold`` live neighbours. ``clipping_range``: each
    coordinate of an update is clipped to ±this before quantization (the devices count what
    gets clipped, ``secagg_clipped_values``). ``quantization_range``: integer levels over
    ``[-clipping_range, clipping_range]``, so one level is ``2·clipping_range/quantization_range``.
    ``max_weight``: the largest reply weight; 1 with fedrec's uniform weights (a larger value only
    costs precision). ``timeout_s``: how long each of the four stages waits for replies
    (0: ``federation.timeout_s``).
    """

    name: str = "none"
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 1.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1.0
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SECURE_AGGREGATIONS:
            raise ValueError(
                f"secure_aggregation.name='{self.name}'; accepted: {', '.join(SECURE_AGGREGATIONS)}"
            )
        if not self.clipping_range > 0 or self.timeout_s < 0:
            raise ValueError("secure_aggregation.clipping_range must be > 0 and timeout_s >= 0")
        if self.modulus_range > 2**32:
            raise ValueError(
                f"secure_aggregation.modulus_range={self.modulus_range}; expected <= 2**32"
            )
        if self.enabled:
            self.workflow(timeout_s=None)  # Flower's own checks, at config time

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    @property
    def quantization_step(self) -> float:
        """One quantization level in update units: the aggregate's error bound per coordinate."""
        return 2 * self.clipping_range / self.quantization_range

    def workflow(self, timeout_s: float | None) -> SecAggPlusWorkflow:
        """Flower's workflow for these settings (its ValueError names a bad one)."""

        def count_or_share(value: float) -> int | float:
            return int(value) if value > 1 else float(value)

        return SecAggPlusWorkflow(
            num_shares=count_or_share(self.num_shares),
            reconstruction_threshold=count_or_share(self.reconstruction_threshold),
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=int(self.quantization_range),
            modulus_range=int(self.modulus_range),
            timeout=timeout_s,
        )

    def check_federation(self, *, clients_per_round: int) -> None:
        """Refuse a round size SecAgg+ cannot sum without overflow or cannot run at all."""
        if clients_per_round < 2:
            raise ValueError(
                "secure_aggregation=secaggplus needs federation.clients_per_round >= 2 "
                "(SecAgg+ masks updates against each other)"
            )
        if clients_per_round * self.quantization_range * self.max_weight >= self.modulus_range:
            raise ValueError(
                f"secure_aggregation: {clients_per_round} clients × quantization_range "
                f"{self.quantization_range} overflows modulus_range {self.modulus_range}; "
                "lower quantization_range or clients_per_round"
            )


@dataclass
class SecAggRoundRecord(RoundRecord):
    """A round as the server saw it under SecAgg+: ``accepted`` counts devices whose masked
    update entered the sum with a non-zero weight; ``failed`` every sampled device whose masked
    update did not arrive (error or stage timeout)."""

    secagg_clipped_values: int = 0  # update values the devices clipped to ±clipping_range


class SecAggDeltaFedAvg(LegacyFedAvg):
    """Legacy FedAvg whose aggregate is ``items + server_lr · (mean of the devices' deltas)``.

    The SecAgg+ workflow hands ``aggregate_fit`` one result per device, each carrying the same
    unmasked weighted mean; the per-device metrics arrived in the clear."""

    def __init__(
        self,
        *,
        initial_arrays: dict[str, np.ndarray],
        sent_config: dict,
        strategy_spec: StrategySpec,
        rounds: int,
        clients_per_round: int,
        eval_clients_per_round: int,
        num_clients: int,
        eval_every_rounds: int = 1,
        min_replies: int = 1,
        on_round: RoundCallback | None = None,
    ) -> None:
        self.global_arrays = {name: np.asarray(v) for name, v in sorted(initial_arrays.items())}
        names = ",".join(self.global_arrays)

        def config(server_round: int) -> dict:
            this_round = config_for_round(sent_config, strategy_spec, server_round, rounds)
            return {**this_round, "server-round": server_round, ARRAY_NAMES_KEY: names}

        super().__init__(
            fraction_fit=clients_per_round / num_clients,
            fraction_evaluate=eval_clients_per_round / num_clients,
            min_fit_clients=clients_per_round,
            min_evaluate_clients=eval_clients_per_round,
            min_available_clients=num_clients,
            on_fit_config_fn=config,
            on_evaluate_config_fn=config,
            accept_failures=True,
        )
        self.server_lr = strategy_spec.server_lr
        self.server_lr_schedule = strategy_spec.server_lr_schedule
        self.rounds, self.eval_every_rounds = rounds, max(1, eval_every_rounds)
        self.min_replies, self.on_round = min_replies, on_round
        self.privacy_tally = PrivacyTally()
        self.record = SecAggRoundRecord(0)
        self._aggregated = True
        self._started = time.perf_counter()

    def _parameters(self) -> Parameters:
        return ndarrays_to_parameters(list(self.global_arrays.values()))

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters:
        return self._parameters()

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._started = time.perf_counter()
        instructions = super().configure_fit(server_round, self._parameters(), client_manager)
        self.record = SecAggRoundRecord(server_round, sampled=len(instructions))
        self._aggregated = False
        return instructions

    def aggregate_fit(self, server_round: int, results, failures):
        """Count the devices from their clear metrics, then apply the unmasked mean."""
        self._aggregated = True
        record = self.record
        record.failed = record.sampled - len(results)
        losses = []
        for proxy, fitres in results:
            metrics = fitres.metrics
            if fitres.num_examples > 0:
                record.accepted += 1
            elif any(metrics.get(key) for key in DECLINED):
                record.declined += 1
            elif metrics.get(ROUND_REFUSED):
                record.refused += 1
            elif metrics.get(BUDGET_EXHAUSTED):
                record.budget_exhausted += 1
            if "epsilon" in metrics:
                self.privacy_tally.report(
                    proxy.node_id,
                    float(metrics["epsilon"]),
                    budget_exhausted=fitres.num_examples == 0
                    and bool(metrics.get(BUDGET_EXHAUSTED)),
                )
            if "train_loss" in metrics and fitres.num_examples > 0:
                losses.append(float(metrics["train_loss"]))
            record.secagg_clipped_values += int(metrics.get(CLIPPED_VALUES, 0))
        record.train_loss = float(np.mean(losses)) if losses else float("nan")
        self.privacy_tally.fill(record)
        if record.secagg_clipped_values:
            logger.warning(
                "round %d: devices clipped %d update values to ±clipping_range; raise "
                "secure_aggregation.clipping_range",
                server_round,
                record.secagg_clipped_values,
            )
        if record.accepted < max(1, self.min_replies) or not results:
            record.skipped = 1
            logger.warning(
                "round %d skipped: %d updates in the secure sum, fewer than min_replies=%d",
                server_round,
                record.accepted,
                self.min_replies,
            )
            return None, {}
        mean = parameters_to_ndarrays(results[0][1].parameters)
        reason = self._rejection(mean)
        if reason is not None:  # only the sum can be checked: the round is lost, not one update
            record.rejected, record.accepted, record.skipped = record.accepted, 0, 1
            logger.warning("round %d: rejected the secure aggregate: %s", server_round, reason)
            return None, {}
        step = self.server_lr * server_lr_factor(self.server_lr_schedule, server_round, self.rounds)
        self.global_arrays = {
            name: (current + step * delta).astype(current.dtype)
            for (name, current), delta in zip(self.global_arrays.items(), mean, strict=True)
        }
        return self._parameters(), {}

    def _rejection(self, mean: list[np.ndarray]) -> str | None:
        if len(mean) != len(self.global_arrays):
            return f"{len(mean)} arrays; expected {len(self.global_arrays)}"
        for (name, current), delta in zip(self.global_arrays.items(), mean, strict=True):
            if delta.shape != current.shape:
                return f"'{name}' has shape {delta.shape}; expected {current.shape}"
            if not np.isfinite(delta).all():
                return f"'{name}' holds NaN or infinite values"
        return None

    def _finish_round(self, evaluation: dict[str, float]) -> None:
        if not self._aggregated:  # the protocol halted (too few live devices) before the sum
            self.record.failed, self.record.skipped = self.record.sampled, 1
            self._aggregated = True
            logger.warning(
                "round %d: secure aggregation halted; model unchanged", self.record.server_round
            )
        self.record.evaluation = evaluation
        self.record.seconds = time.perf_counter() - self._started
        if self.on_round is not None:
            self.on_round(self.record)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Every ``eval_every_rounds`` rounds, and always in round 0 and the last round; a round
        without evaluation is reported here (the legacy workflow skips ``aggregate_evaluate``)."""
        if server_round % self.eval_every_rounds and server_round != self.rounds:
            self._finish_round({})
            return []
        instructions = super().configure_evaluate(server_round, self._parameters(), client_manager)
        if not instructions:
            self._finish_round({})
        return instructions

    def aggregate_evaluate(self, server_round: int, results, failures):
        per_user = []
        for _, res in results:
            metrics: dict[str, float] = dict(res.metrics)
            if metrics.pop("evaluated", 0):
                metrics.pop(NUM_EXAMPLES, None)
                per_user.append(metrics)
        if failures:
            logger.warning("round %d: %d evaluations failed", server_round, len(failures))
        evaluation = average_over_users(per_user) if per_user else {}
        self._finish_round(evaluation)
        return None, evaluation


FinishCallback = Callable[[dict[str, np.ndarray]], None]


def run_secagg_federation(
    grid: Grid,
    context: Context,
    plan,
    spec: SecureAggregationSpec,
    *,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
) -> None:
    """Round-0 evaluation (the untrained baseline), then ``plan.rounds`` SecAgg+ rounds through
    Flower's legacy ``DefaultWorkflow``; ``plan`` is a :class:`~fedrec.server.app.ServerPlan`."""
    from fedrec.server.app import initial_item_arrays

    random.seed(plan.seed)  # the legacy sampler and SecAgg+'s neighbour shuffle use it
    strategy = SecAggDeltaFedAvg(
        initial_arrays=initial_item_arrays(plan),
        sent_config=flat_round_config(plan.settings),
        strategy_spec=plan.strategy,
        rounds=plan.rounds,
        clients_per_round=plan.clients_per_round,
        eval_clients_per_round=plan.eval_clients_per_round,
        num_clients=plan.num_clients,
        eval_every_rounds=plan.eval_every_rounds,
        min_replies=plan.min_replies,
        on_round=on_round,
    )
    secagg = spec.workflow(timeout_s=spec.timeout_s or plan.timeout_s)

    def fit_workflow(grid: Grid, context: Context) -> None:
        cfg = context.state.config_records[MAIN_CONFIGS_RECORD]
        if cfg[WorkflowKey.CURRENT_ROUND] == 1 and plan.eval_clients_per_round:
            cfg[WorkflowKey.CURRENT_ROUND] = 0  # the baseline, before the first update
            default_evaluate_workflow(grid, context)
            cfg[WorkflowKey.CURRENT_ROUND] = 1
        secagg(grid, context)

    legacy = LegacyContext(context, config=ServerConfig(num_rounds=plan.rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    if on_finish is not None:
        on_finish(dict(strategy.global_arrays))


def build_secagg_server_app(
    plan,
    spec: SecureAggregationSpec,
    *,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
) -> ServerApp:
    """The ServerApp of ``secure_aggregation=secaggplus`` (see :func:`run_secagg_federation`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_secagg_federation(grid, context, plan, spec, on_round=on_round, on_finish=on_finish)

    return app
