"""``summary.json`` of a federation run: what a reader of the run directory needs first."""

from __future__ import annotations

import dataclasses

from fedrec.config.secure_aggregation import SERVER_SAW, SERVER_SAW_ALS
from fedrec.config.simulate import SimulateJobConfig
from fedrec.data import Split
from fedrec.federation.loop import FederationPlan
from fedrec.privacy import PRIVACY_MODES
from fedrec.run_dir import RunRecorder

DP_ALS_GUARANTEE = (
    "user-level (DP-ALS): (ε, δ) from the server's accountant over every release (the "
    "summed statistics each round, the item counts once; every user counted in every round) "
    "bounds what the released item tables reveal about any one user's whole log, to whoever "
    "sees the model; not against a server that sees single replies (fedrec.privacy.als)"
)
COVARIANCE_START_GUARANTEE = (
    "user-level (DP-ALS with a covariance start): (ε, δ) from the server's accountant over "
    "every release (round 1 the users' unit-norm popularity, round 2 their item covariance, then "
    "the summed statistics each round; every user counted in every round) bounds what the "
    "released item tables reveal about any one user's whole log, to whoever sees the model; not "
    "against a server that sees single replies, which here list every item of a user's log "
    "(fedrec.privacy.als)"
)
DISTRIBUTED_DP_ALS_GUARANTEE = (
    "user-level (distributed DP-ALS on SecAgg+): the devices add shares of DP-ALS's noise to "
    "their masked statistics and the server tops up what dropped shares miss, so the released "
    "item tables are (ε, δ)-DP to whoever sees the model; the server itself sees only the sum "
    "with the shares of the devices in it, and server_view_epsilon accounts for that (finite "
    "while at least two shares arrive each round; the server is assumed honest but curious: "
    "it runs the protocol and the top-up as written)"
)


def final_metrics(cfg: SimulateJobConfig, last: dict, *, user_level: bool) -> dict[str, float]:
    """The last round's evaluation metrics and ε: what the command returns."""
    names = (
        set(cfg.eval.full_metrics)
        | {f"sampled_{m}" for m in cfg.eval.sampled_metrics}
        | {"rmse", "mae"}
    )
    final = {k: v for k, v in last.items() if k in names}
    final |= {
        "epsilon_max": last.get("epsilon_max", 0.0),
        "epsilon_median": last.get("epsilon_median", 0.0),
    }
    if user_level:
        final["user_level_epsilon"] = last.get("user_level_epsilon", 0.0)
    if "server_view_epsilon" in last:
        final["server_view_epsilon"] = last["server_view_epsilon"]
    return final


def simulate_summary(
    cfg: SimulateJobConfig,
    plan: FederationPlan,
    recorder: RunRecorder,
    split: Split,
    *,
    num_clients: int,
    resumed_after: int | None,
    wall_s: float,
    workers: dict[str, int] | None = None,
) -> dict[str, float]:
    """Write ``summary.json`` and the metrics plot; return the final metrics. ``workers``: the
    training replies per Ray node that computed them (where the run did its work)."""
    rows = recorder.rows
    last = rows[-1] if rows else {}
    dp_als = plan.als is not None and plan.als.privacy is not None
    distributed = dp_als and plan.als.privacy.distributed
    final = final_metrics(cfg, last, user_level=plan.user_level is not None or dp_als)
    totals = {
        key: sum(row.get(key, 0) for row in rows)
        for key in ("sampled", "accepted", "failed", "rejected", "budget_exhausted", "declined")
    }
    faults = {key: sum(row.get(key, 0) for row in rows) for key in ("timed_out",)}
    faults["rounds_skipped"] = sum(row.get("skipped", 0) for row in rows)
    recorder.plot("server_round", ["train_loss", *final], f"federated {cfg.algorithm.name.upper()}")
    privacy = cfg.privacy
    summary_privacy = {}
    if privacy.record_level:
        summary_privacy["epsilon_per_user"] = {
            "min": last.get("epsilon_min", 0.0),
            "median": last.get("epsilon_median", 0.0),
            "max": last.get("epsilon_max", 0.0),
            "users_reporting": last.get("clients_with_epsilon", 0),
            "budget": privacy.target_epsilon,
            # distinct users who sat out at least one round because their budget was spent
            "users_at_budget": last.get("users_at_budget", 0),
        }
    if plan.user_level is not None:
        summary_privacy["user_level"] = {
            "epsilon": final["user_level_epsilon"],
            "delta": plan.user_level.delta,
            "noise_multiplier": plan.user_level.noise_multiplier,
            "clip_norm": plan.user_level.clip_norm,
            "sample_rate": plan.user_level.sample_rate,
            "denominator": plan.user_level.expected_clients,
            "rounds": plan.user_level.rounds,
            "accountant": plan.user_level.accountant,
            "budget": privacy.user_target_epsilon,
        }
    if dp_als:
        dp = plan.als.privacy
        summary_privacy["user_level"] = {
            "epsilon": final["user_level_epsilon"],
            "delta": dp.delta,
            "mechanism": "DP-ALS: Gaussian noise on the summed statistics (fedrec.privacy.als)",
            "noise_multiplier": dp.noise_multiplier,
            "clip_norm": dp.clip_norm,
            "max_items": dp.max_items,
            "noise_std": dp.stds,
            "sample_rate": 1.0,
            "rounds": cfg.federation.rounds,
            "accountant": dp.accountant,
            "budget": privacy.user_target_epsilon,
        }
        if dp.covariance_start:
            summary_privacy["user_level"]["mechanism"] = (
                "DP-ALS with a covariance start: Gaussian noise on the users' unit-norm "
                "popularity (round 1), on their item covariance (round 2; each of sensitivity "
                "1 for a user's whole log), then on the summed statistics (fedrec.privacy.als)"
            )
        if distributed:
            summary_privacy["user_level"] |= {
                "mechanism": "distributed DP-ALS: the devices' noise shares in the SecAgg+ sum, "
                "topped up by the server where shares dropped (fedrec.privacy.als)",
                "noise_shares": dp.noise_shares,
                "share_std": {k: v / dp.noise_shares**0.5 for k, v in dp.stds.items()},
                "server_view_epsilon": final.get("server_view_epsilon"),
            }
    secagg = cfg.secure_aggregation
    recorder.write_summary(
        {
            "job": "simulate",
            "dataset": split.train.source,
            "data_notes": list(split.train.notes),
            "num_clients": num_clients,
            "num_items": split.train.num_items,
            "rounds": cfg.federation.rounds,
            "algorithm": cfg.algorithm.name,
            "engine": cfg.federation.engine,
            "trainer": cfg.federation.resolved_trainer,
            "privacy": {
                "mode": privacy.mode,
                "guarantee": _dp_als_guarantee(plan, distributed)
                if dp_als
                else PRIVACY_MODES.get(privacy.mode).guarantee,
                "delta": privacy.delta,
                "accountant": privacy.accountant,
                **(
                    {  # DP-SGD's settings, only where DP-SGD runs
                        "noise_multiplier": privacy.noise_multiplier,
                        "max_grad_norm": privacy.max_grad_norm,
                    }
                    if privacy.record_level
                    else {}
                ),
            },
            "final": final,
            "updates": totals,
            "faults": {
                **faults,
                "injected": dataclasses.asdict(cfg.faults),
                "resumed_after_round": resumed_after,
            },
            **summary_privacy,
            "secure_aggregation": (
                {
                    **dataclasses.asdict(secagg),
                    "server_saw": (
                        SERVER_SAW_ALS
                        + (", with the devices' noise shares in it" if distributed else "")
                    )
                    if cfg.algorithm.name == "als"
                    else SERVER_SAW,
                    "quantization_step": secagg.quantization_step,
                    "clipped_values": sum(row.get("secagg_clipped_values", 0) for row in rows),
                }
                if secagg.enabled
                else {"name": "none", "server_saw": "each device's update"}
            ),
            "wall_time_s": wall_s,
            "seconds_per_round": [row["seconds"] for row in rows],
            "ray": {
                "address": cfg.federation.ray_address or "local",
                "train_replies_by_node": dict(workers or {}),
            },
        }
    )
    return final


def _dp_als_guarantee(plan: FederationPlan, distributed: bool) -> str:
    if distributed:
        return DISTRIBUTED_DP_ALS_GUARANTEE
    covariance = plan.als is not None and plan.als.covariance_start
    return COVARIANCE_START_GUARANTEE if covariance else DP_ALS_GUARANTEE
