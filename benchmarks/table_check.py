"""The device-side table check on honest and crafted tables, recorded in RESULTS.md.

Usage: ``python benchmarks/table_check.py [--seeds 0,1,2] [--rounds 10] [--clients 100]``

Honest in-process federations on ML-100K (the audit's recipe: Adam lr 0.01, 2 local epochs,
dim 64, FedAvg server_lr 40, all clients every round) in every privacy setting of the audit:
none, record-level and user-level DP at ε 16/8/4/1 (user-level: the server's noisy mean, as
DP-FedAvg releases it). Every table the server sends from round 1 on is checked as a device
checks it (:func:`fedrec.training.table_check.check_item_table`, with and without the previous
table); a refusal of an honest table is a false alarm. Each round the active server's crafted
table (``bias_silencing``) is checked too; a crafted table accepted is a miss.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch
from common import append_results, markdown_table

from fedrec.config import compose
from fedrec.data import load_split
from fedrec.membership.active import CRAFTED_TABLES
from fedrec.membership.run import AuditSetting, setting_privacy
from fedrec.model.mf import random_item_arrays
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.privacy.user_level import noisy_mean, plan_user_level
from fedrec.training.table_check import ImplausibleTable, check_item_table

EPSILONS = (16.0, 8.0, 4.0, 1.0)


def refused(table: dict[str, np.ndarray], previous: dict[str, np.ndarray] | None) -> str | None:
    try:
        check_item_table(table, previous=previous)
    except ImplausibleTable as err:
        return str(err)
    return None


def run_setting(setting: AuditSetting, split, seed: int, rounds: int, clients: int) -> dict:
    """One honest federation; counts of refused honest and accepted crafted tables."""
    cfg = compose("audit", [f"seed={seed}", f"federation.num_clients={clients}"])
    fed = cfg.federation
    users = np.sort(np.random.default_rng(seed).permutation(split.train.num_users)[:clients])
    honest = SimulatedClients.from_split(split, users)
    privacy = setting_privacy(setting, cfg.privacy, rounds)
    recipe = LocalRecipe(cfg.model, fed.local, privacy)
    plan = None
    if privacy.user_level:
        plan = plan_user_level(
            privacy, num_clients=clients, clients_per_round=clients, rounds=rounds
        )
    noise_rng = np.random.default_rng([seed, 11])
    items = random_item_arrays(
        split.train.num_items, cfg.model.embedding_dim, init_std=cfg.model.init_std, seed=seed
    )
    counts = {"honest": 0, "refused": 0, "refused_with_previous": 0, "crafted_accepted": 0}
    reasons: list[str] = []
    previous = None
    for server_round in range(1, rounds + 1):
        sent = {k: v.copy() for k, v in items.items()}
        if server_round > 1:  # round 1 sends the server's random initial table
            counts["honest"] += 1
            alone, with_previous = refused(sent, None), refused(sent, previous)
            counts["refused"] += alone is not None
            counts["refused_with_previous"] += with_previous is not None
            reasons += [r for r in (alone, with_previous) if r]
        crafted = CRAFTED_TABLES.get("bias_silencing")(sent)
        counts["crafted_accepted"] += refused(crafted, sent) is None
        counts["crafted_accepted"] += refused(crafted, None) is None
        updates = list(honest.train(sent, recipe, server_round=server_round, seed=seed).values())
        if plan is not None:
            step = noisy_mean(
                updates,
                like=sent,
                clip_norm=plan.clip_norm,
                noise_multiplier=plan.noise_multiplier,
                expected_clients=plan.expected_clients,
                rng=noise_rng,
            )
        else:
            step = {k: np.mean([u[k] for u in updates], axis=0) for k in sent}
        items = {k: (sent[k] + fed.server_lr * step[k]).astype(sent[k].dtype) for k in sent}
        previous = sent
    biases = items["item_bias.weight"].reshape(-1)
    counts["final_bias_sd"] = float(np.std(biases))
    counts["final_max_row_norm"] = float(
        np.linalg.norm(items["item_embedding.weight"], axis=1).max()
    )
    if plan is not None:
        per_value = fed.server_lr * plan.noise_multiplier * plan.clip_norm / plan.expected_clients
        counts["noise"] = f"z={plan.noise_multiplier:.3g} ({per_value:.2g} per value and round)"
    else:
        counts["noise"] = "σ solved per device" if privacy.mode == "record" else "none"
    counts["reasons"] = sorted(set(reasons))[:2]
    return counts


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    started = time.perf_counter()
    split = load_split(compose("audit", []).dataset)
    settings = [AuditSetting("none", math.inf), AuditSetting("record", 1.0)]
    settings += [AuditSetting("user", eps) for eps in EPSILONS]
    rows = []
    total_honest = total_false = total_missed = total_crafted = 0
    for setting in settings:
        per_seed = [run_setting(setting, split, s, args.rounds, args.clients) for s in seeds]
        honest = sum(c["honest"] for c in per_seed)
        false_alarms = sum(c["refused"] + c["refused_with_previous"] for c in per_seed)
        missed = sum(c["crafted_accepted"] for c in per_seed)
        total_honest += 2 * honest
        total_false += false_alarms
        total_missed += missed
        total_crafted += 2 * args.rounds * len(seeds)
        reasons = sorted({r for c in per_seed for r in c["reasons"]})
        rows.append(
            [
                setting.mode,
                "∞" if math.isinf(setting.target_epsilon) else f"{setting.target_epsilon:g}",
                per_seed[0]["noise"],
                f"{np.mean([c['final_bias_sd'] for c in per_seed]):.2f}",
                f"{np.mean([c['final_max_row_norm'] for c in per_seed]):.1f}",
                f"{sum(c['refused'] for c in per_seed)}/{honest}",
                f"{sum(c['refused_with_previous'] for c in per_seed)}/{honest}",
                f"{missed}/{2 * args.rounds * len(seeds)}",
                "; ".join(reasons) or "–",
            ]
        )
        print(rows[-1], flush=True)
    wall = time.perf_counter() - started
    table = markdown_table(
        [
            "mode",
            "ε",
            "noise on the table",
            "final bias sd",
            "final max row norm",
            "honest refused (no previous)",
            "honest refused (with previous)",
            "crafted accepted",
            "refusal reasons",
        ],
        rows,
    )
    body = [
        f"- setting: ML-100K implicit, {args.clients} honest users all training every round, "
        f"{args.rounds} rounds, the audit's recipe (Adam lr 0.01, 2 local epochs, dim 64, FedAvg "
        f"server_lr 40); seeds {seeds}; tables of rounds 2..{args.rounds} checked as a device "
        "checks them (fedrec.training.table_check defaults), with and without the previous table; "
        "the crafted table (every bias at −30) checked every round, with and without the "
        f"previous table. {wall / 60:.1f} min.",
        f"- false alarms: {total_false}/{total_honest} honest checks refused; crafted tables "
        f"accepted: {total_missed}/{total_crafted}.",
        "",
        table,
    ]
    print("\n".join(body))
    append_results("Device-side table check: false alarms and misses (ML-100K)", "\n".join(body))


if __name__ == "__main__":
    main(sys.argv[1:])
