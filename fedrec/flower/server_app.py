"""The Flower ServerApp: the round loop over the Flower transport.

Nothing here decides anything: :func:`fedrec.federation.loop.run_rounds` runs the rounds with the
server rule, :class:`~fedrec.flower.transport.FlowerTransport` carries them to the nodes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrec.config.secure_aggregation import SecureAggregationSpec
from fedrec.federation.loop import FederationPlan, run_rounds
from fedrec.federation.record import RoundCallback
from fedrec.flower.transport import FlowerTransport
from fedrec.registry import Registry

logger = logging.getLogger("fedrec.server")
FinishCallback = Callable[[dict[str, np.ndarray]], None]

# secure_aggregation.name -> (a function returning) the transport class that runs it; imported
# only when a run asks for it (the SecAgg+ path pulls in Flower's legacy workflow).
SECURE_TRANSPORTS: Registry[Callable[[], type]] = Registry("secure_aggregation")


@SECURE_TRANSPORTS.register("secaggplus")
def _secaggplus() -> type:
    from fedrec.flower.secagg_server import SecAggTransport

    return SecAggTransport


def run_federation(
    grid: Grid,
    plan: FederationPlan,
    initial: dict[str, np.ndarray],
    *,
    nodes: int,
    timeout_s: float,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
    context: Context | None = None,
    secure_aggregation: SecureAggregationSpec | None = None,
    workers: Counter[str] | None = None,
) -> dict[str, np.ndarray]:
    """Wait for ``nodes`` nodes, discover their users, run the rounds (through SecAgg+ when
    ``secure_aggregation`` is given; it needs the ServerApp's ``context``). ``workers``, if
    given, counts the training replies by the Ray node that computed them."""
    if secure_aggregation is not None and secure_aggregation.enabled:
        if context is None:
            raise ValueError("secure aggregation needs the ServerApp's context")
        secure = SECURE_TRANSPORTS.get(secure_aggregation.name)()
        transport: FlowerTransport = secure(
            grid, context, secure_aggregation, nodes=nodes, timeout_s=timeout_s
        )
    else:
        transport = FlowerTransport(grid, nodes=nodes, timeout_s=timeout_s, workers=workers)
    final = run_rounds(transport, plan, initial, on_round=on_round)
    if on_finish is not None:
        on_finish(final)
    return final


def build_server_app(
    plan: FederationPlan,
    initial: dict[str, np.ndarray],
    *,
    nodes: int,
    timeout_s: float,
    on_round: RoundCallback | None = None,
    on_finish: FinishCallback | None = None,
    secure_aggregation: SecureAggregationSpec | None = None,
    workers: Counter[str] | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(
            grid,
            plan,
            initial,
            nodes=nodes,
            timeout_s=timeout_s,
            on_round=on_round,
            on_finish=on_finish,
            context=context,
            secure_aggregation=secure_aggregation,
            workers=workers,
        )

    return app
