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
        lambda c: (
            c.secure_aggregation.enabled and c.privacy.user_level and c.algorithm.name != "als"
        ),
        lambda c: (
            _SECAGG + f"privacy.mode none or record, not '{c.privacy.mode}': user-level "
            "DP clips each update at the server, which SecAgg+ hides from it (device-side clipping "
            "with noise on the sum is not implemented; DP-ALS, whose devices bound their own "
            "statistics, runs on SecAgg+)"
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
    (
        lambda c: c.algorithm.name == "als" and c.dataset.mode != "implicit",
        lambda c: (
            "algorithm=als is implicit-feedback ALS: use a dataset with mode=implicit "
            "(e.g. dataset=ml100k), or algorithm=mf for ratings"
        ),
    ),
    (
        lambda c: c.algorithm.name == "als" and c.privacy.record_level,
        lambda c: (
            f"algorithm=als with privacy.mode={c.privacy.mode}: DP-ALS is user-level DP on the "
            "aggregate (privacy=user); record-level DP-SGD is algorithm=mf's"
        ),
    ),
    (
        lambda c: (
            c.algorithm.name == "als"
            and c.privacy.user_level
            and not (c.algorithm.clip_norm > 0 and c.algorithm.max_items > 0)
        ),
        lambda c: (
            "DP-ALS (algorithm=als, privacy=user) needs algorithm.clip_norm > 0 and "
            "algorithm.max_items > 0: they bound one user's contribution, which the noise is "
            f"calibrated to (got clip_norm={c.algorithm.clip_norm}, "
            f"max_items={c.algorithm.max_items})"
        ),
    ),
    (
        lambda c: c.algorithm.name == "als" and c.defense.name != "none",
        lambda c: (
            f"defense={c.defense.name} works on table updates; algorithm=als sends sufficient "
            "statistics, which the server validates and bounds itself: use defense=none"
        ),
    ),
    (
        lambda c: c.algorithm.name == "als" and c.strategy.name != "fedavg",
        lambda c: (
            f"strategy={c.strategy.name} steps a table along an averaged update; "
            "algorithm=als solves the table from summed statistics: use strategy=fedavg"
        ),
    ),
    (
        lambda c: (
            c.algorithm.name == "als"
            and c.algorithm.covariance_start
            and c.secure_aggregation.enabled
        ),
        lambda c: (
            _SECAGG + "algorithm.covariance_start=false: masking its two releases (the "
            "popularity over the catalogue, the co-occurrence over the frequent items) as "
            "fixed-shape vectors is not built"
        ),
    ),
    (
        lambda c: (
            c.algorithm.name == "als" and c.secure_aggregation.enabled and c.algorithm.item_grams
        ),
        lambda c: (
            _SECAGG + "algorithm.item_grams=false with algorithm=als: SecAgg+ masks "
            "fixed-shape vectors, and dense per-item Grams are items × dim² values per user"
        ),
    ),
    (
        lambda c: (
            c.algorithm.name == "als"
            and c.secure_aggregation.enabled
            and not (
                0 < c.algorithm.clip_norm**2 <= c.secure_aggregation.clipping_range
                and c.secure_aggregation.clipping_range >= 1
            )
        ),
        lambda c: (
            _SECAGG + "algorithm.clip_norm in (0, √clipping_range] and clipping_range >= 1 "
            "with algorithm=als: the masked statistics (counts of 0 or 1, factor entries up to "
            "clip_norm, Gram entries up to clip_norm²) must fit in ±clipping_range (got "
            f"clip_norm={c.algorithm.clip_norm}, "
            f"clipping_range={c.secure_aggregation.clipping_range})"
        ),
    ),
    (
        lambda c: (
            c.algorithm.noise_shares > 0
            and not (
                c.algorithm.name == "als" and c.privacy.user_level and c.secure_aggregation.enabled
            )
        ),
        lambda c: (
            f"algorithm.noise_shares={c.algorithm.noise_shares} (distributed DP: the devices "
            "add the noise) needs algorithm=als, privacy=user and "
            "secure_aggregation=secaggplus: without secure aggregation the server sees each "
            "device's statistics with only a small share of the noise on them"
        ),
    ),
    (
        lambda c: c.algorithm.covariance_start and c.algorithm.name != "als",
        lambda c: "algorithm.covariance_start is a way to start algorithm=als; set name=als",
    ),
    (
        lambda c: c.algorithm.name == "als" and c.federation.weighting != "uniform",
        lambda c: "algorithm=als sums every user's statistics: use federation.weighting=uniform",
    ),
]


def check_simulate(cfg: SimulateJobConfig) -> None:
    """Raise ``ValueError`` with the first rule ``cfg`` breaks."""
    for applies, message in RULES:
        if applies(cfg):
            raise ValueError(message(cfg))
    if cfg.secure_aggregation.enabled:
        cfg.secure_aggregation.check_federation(clients_per_round=cfg.federation.clients_per_round)
