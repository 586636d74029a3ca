"""Secure aggregation with Flower's SecAgg+: the server learns only the sum of a round's updates.

Why the legacy pieces: in flwr 1.41 SecAgg+ exists only as
``flwr.server.workflow.SecAggPlusWorkflow``, which runs with a ``LegacyContext`` and calls a
legacy ``flwr.server.strategy`` strategy (``configure_fit``/``aggregate_fit`` with ``FitRes``);
the new ``flwr.serverapp.strategy`` strategies fail inside it (../shared/STACK.md). So
:class:`SecAggTransport` is the round loop's transport for this path, and translates only: each
round it hands the workflow the round's devices and request (``configure_fit``), runs the four
SecAgg+ stages, and turns what ``aggregate_fit`` receives into node replies for the one server
rule (:class:`~fedrec.federation.rule.ServerRule`): one reply holding the unmasked mean of the
trained devices' updates, and each device's outcome from its clear metrics. For federated ALS
the devices mask their statistics, dense over the catalogue, and the reply holds their sums.
Discovery and evaluation are plain requests (``secaggplus_mod`` lets every non-training
message through).

What the server sees per device: masked integers (uniform modulo ``modulus_range``) and the scalar
metrics in the clear (loss, ε, flags, ``num-examples``). After unmasking it has only the
weighted mean of the round's updates, clipped coordinate-wise to ``±clipping_range`` and
quantized to ``2·clipping_range/quantization_range``. Hence what the plain path checks per update
cannot be checked here: names/shapes/dtypes/finiteness apply to each update there, but only to the
unmasked mean here (a hostile device can still move the mean by up to ``clipping_range`` per
coordinate divided by the round's number of devices). Also not on this path: user-level DP (its
clipping is per update at the server), the cohort engine (a node sums many users), example
weighting, FedAdam/FedYogi, ``strategy.max_update_norm``, robust rules, checkpoints and
``resume=`` (the configuration is refused at start, :mod:`fedrec.config.rules`).
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fedrec.config.secure_aggregation import SecureAggregationSpec
from fedrec.flower.secagg_client import ARRAY_NAMES_KEY, CLIPPED_VALUES
from fedrec.flower.transport import FlowerTransport
from fedrec.protocol.replies import NodeReply, UserOutcome, decode_user_reply
from fedrec.training.als.statistics import SECURE_NAMES, sums_from_secure_mean

logger = logging.getLogger("fedrec.server")


class _RoundCapture(LegacyFedAvg):
    """The legacy strategy the workflow calls: it asks the devices it is given and keeps what
    ``aggregate_fit`` receives, deciding nothing."""

    def __init__(self) -> None:
        super().__init__(accept_failures=True)
        self.instructions: list = []
        self.results: list | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.instructions

    def aggregate_fit(self, server_round, results, failures):
        self.results = list(results)
        return None, {}


class SecAggTransport(FlowerTransport):
    """The Flower transport whose training requests go through SecAgg+."""

    adds_shares = True  # the devices add distributed DP-ALS's noise shares (secagg_client)

    def __init__(
        self,
        grid: Grid,
        context: Context,
        spec: SecureAggregationSpec,
        *,
        nodes: int,
        timeout_s: float,
    ) -> None:
        super().__init__(grid, nodes=nodes, timeout_s=timeout_s)
        if not all(seat.one_user for seat in self.seats):
            raise ValueError("SecAgg+ needs one user per node (federation.engine=per_user)")
        self.capture = _RoundCapture()
        self.legacy = LegacyContext(
            context, config=ServerConfig(num_rounds=1), strategy=self.capture
        )
        self.round_config = ConfigRecord()
        self.legacy.state.config_records[MAIN_CONFIGS_RECORD] = self.round_config
        self.workflow = spec.workflow(timeout_s=spec.timeout_s or timeout_s)
        self.clipped_values = 0

    def train(self, server_round: int, users: np.ndarray, arrays, config: dict):
        self.clipped_values = 0
        names = sorted(arrays)
        parameters = ndarrays_to_parameters([np.asarray(arrays[name]) for name in names])
        self.round_config[WorkflowKey.CURRENT_ROUND] = server_round
        self.legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            parameters, keep_input=True
        )
        fit_config = {**config, ARRAY_NAMES_KEY: ",".join(names)}
        node_of = {self.seats[u].node: int(u) for u in users.tolist()}
        run_id = self.grid.run.run_id
        self.capture.instructions = [
            (GridClientProxy(node, self.grid, run_id), FitIns(parameters, dict(fit_config)))
            for node in node_of
        ]
        self.capture.results = None
        self.workflow(self.grid, self.legacy)
        results = self.capture.results
        if results is None:  # the protocol halted (too few live devices) before the sum
            logger.warning("round %d: secure aggregation halted; model unchanged", server_round)
            return [
                NodeReply(node, [UserOutcome(user, "failed")], error="secure aggregation halted")
                for node, user in node_of.items()
            ]
        replies, trained = [], []
        answered = set()
        clipped = 0
        for proxy, fitres in results:
            user = node_of.get(proxy.node_id)
            if user is None:
                continue
            answered.add(proxy.node_id)
            metrics = dict(fitres.metrics)
            clipped += int(metrics.get(CLIPPED_VALUES, 0))
            if fitres.num_examples > 0:
                epsilon = metrics.get("epsilon")
                trained.append(
                    UserOutcome(
                        user,
                        "trained",
                        None if epsilon is None else float(epsilon),
                        float(metrics.get("train_loss", float("nan"))),
                        int(metrics.get("local_steps", 0)),
                    )
                )
            else:
                replies.append(decode_user_reply(proxy.node_id, user, None, metrics))
        for node, user in node_of.items():
            if node not in answered:  # its masked vector never arrived (error or stage timeout)
                replies.append(NodeReply(node, [UserOutcome(user, "failed")], error="no reply"))
        self.clipped_values = clipped
        if clipped:
            logger.warning(
                "round %d: devices clipped %d update values to ±clipping_range; raise "
                "secure_aggregation.clipping_range",
                server_round,
                clipped,
            )
        if trained:
            mean = parameters_to_ndarrays(results[0][1].parameters)
            if config.get("algorithm") == "als":  # the users' statistics: their sums
                released = sums_from_secure_mean(
                    dict(zip(SECURE_NAMES, mean, strict=False)),
                    len(trained),
                    noisy=int(config.get("als.noise_shares", 0)) > 0,
                )
                replies.append(
                    NodeReply("secagg+", trained, released, float(len(trained)), summed=True)
                )
                return replies
            released = {
                name: np.asarray(value).astype(np.asarray(arrays[name]).dtype, copy=False)
                if np.shape(value) == np.shape(arrays[name])
                else np.asarray(value)
                for name, value in zip(names, mean, strict=False)
            }
            replies.append(
                NodeReply("secagg+", trained, released, float(len(trained)), per_user=False)
            )
        return replies

    def annotate(self, record) -> None:
        """The round's count of values the devices clipped (a metrics.csv column)."""
        record.secagg_clipped_values = self.clipped_values
