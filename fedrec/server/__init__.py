"""The server side: the Flower ServerApp, strategy set-up, update validation, metric aggregation."""

from fedrec.server.app import ServerPlan, build_server_app, run_federation
from fedrec.server.strategy import STRATEGIES, RoundRecord, StrategySpec, make_strategy
from fedrec.server.validation import rejection_reason

__all__ = [
    "STRATEGIES",
    "RoundRecord",
    "ServerPlan",
    "StrategySpec",
    "build_server_app",
    "make_strategy",
    "rejection_reason",
    "run_federation",
]
