"""What a simulate config may not combine: one table of (condition, message), checked at start.

Each rule is refused before any data is loaded or any device trains, with a message that says
what to change. ``check_simulate`` raises the first that applies.
"""

from __future__ import annotations

from collections.abc import Callable

from fedrec.config.simulate import SimulateJobConfig

Rule = tuple[Callable[[SimulateJobConfig], bool], Callable[[SimulateJobConfig], str]]

_SECAGG = "secure_aggregation=secaggplus needs "
RULES: list[Rule] = [
    (
        lambda c: c.federation.engine == "cohort" and c.faults.injects_client_faults,
        lambda c: (
            "faults.dropout_rate/straggler_rate act per user node: use "
            "federation.engine=per_user (a cohort node speaks for many users)"
        ),
    ),
    (
        lambda c: c.privacy.user_level and c.federation.weighting == "examples",
        lambda c: (
            "federation.weighting=examples cannot be used with user-level DP: the noise is "
            "calibrated to one clipped update per user with equal weight"
        ),
    ),
    (
        lambda c: c.defense.name != "none" and c.federation.engine != "per_user",
        lambda c: (
            f"defense={c.defense.name} needs federation.engine=per_user: a cohort node "
            "sends the mean of its users' updates, so a robust rule over node replies is "
            "meaningless (fedrec poison measures the defenses per user)"
        ),
    ),
    (
        lambda c: c.defense.name != "none" and c.privacy.user_level,
        lambda c: (
            f"defense={c.defense.name} cannot be combined with privacy.mode="
            f"{c.privacy.mode}: the server's noise is calibrated to the mean of clipped updates; "
            "use defense=none"
        ),
    ),
    (
        lambda c: c.defense.name != "none" and c.secure_aggregation.enabled,
        lambda c: (
            f"defense={c.defense.name} needs each user's update at the server; "
            "secure aggregation shows it only the round's sum: use defense=none"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and c.federation.engine != "per_user",
        lambda c: (
            _SECAGG + "federation.engine=per_user (a cohort node already sends the sum "
            "of many users)"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and c.privacy.user_level,
        lambda c: (
            _SECAGG + f"privacy.mode none or record, not '{c.privacy.mode}': user-level "
            "DP clips each update at the server, which SecAgg+ hides from it (device-side clipping "
            "with noise on the sum is not implemented)"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and c.federation.weighting != "uniform",
        lambda c: (
            _SECAGG + "federation.weighting=uniform: SecAgg+ sums w·update clipped to "
            "±clipping_range with w <= max_weight, and each weight travels in the clear anyway"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and c.strategy.name != "fedavg",
        lambda c: (
            _SECAGG + "strategy=fedavg (the SecAgg+ path implements fedrec's FedAvg rule only)"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and c.strategy.max_update_norm is not None,
        lambda c: (
            _SECAGG + "strategy.max_update_norm unset: a per-update norm bound needs each update"
        ),
    ),
    (
        lambda c: c.secure_aggregation.enabled and bool(c.faults.server_crash_round or c.resume),
        lambda c: (
            _SECAGG + "no resume= and no faults.server_crash_round (no checkpoints on this path)"
        ),
    ),
]


def check_simulate(cfg: SimulateJobConfig) -> None:
    """Raise ``ValueError`` with the first rule ``cfg`` breaks."""
    for applies, message in RULES:
        if applies(cfg):
            raise ValueError(message(cfg))
    if cfg.secure_aggregation.enabled:
        cfg.secure_aggregation.check_federation(clients_per_round=cfg.federation.clients_per_round)
