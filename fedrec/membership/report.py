"""The audit's table (CSV and Markdown) and plot: AUC and NDCG@10 against ε, one line per mode."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from fedrec.membership.run import SettingOutcome

VIEW_WORDS = {
    "update": "each user's update",
    "aggregate": "only the noisy sum (secure aggregation, simulated)",
    "active": "each update, from a crafted table (active server)",
}


def rows(outcomes: list[SettingOutcome], attacks: list[str]) -> list[dict]:
    """One row per (setting, view): every attack's mean per-user AUC, the best one, the in/out
    game AUC of the best attack with its standard error, the bound, NDCG@10."""
    table = []
    for outcome in outcomes:
        for view, tally in outcome.views.items():
            means = {a: float(np.mean(tally.aucs[a])) for a in attacks if tally.aucs.get(a)}
            best = max(means, key=means.get)
            game = tally.games.get(best)
            seen = VIEW_WORDS[view]
            if outcome.setting.mode == "user" and view == "update":
                seen = "each user's clipped update (before the server's noise)"
            row = {
                "mode": outcome.setting.mode,
                "server_sees": seen,
                "view": view,
                "target_epsilon": outcome.setting.target_epsilon,
                "epsilon_spent": outcome.epsilon_spent,
                "delta": None,
                "noise": outcome.noise,
                "auc_bound": outcome.bounds[view],
                **{f"auc_{a}": means.get(a, math.nan) for a in attacks},
                "best_attack": best,
                "best_auc": means[best],
                "users_audited": len(tally.aucs[best]),
                "game_auc": game.auc() if game else math.nan,
                "game_auc_se": game.standard_error() if game else math.nan,
                "game_pairs": len(game.inside) if game else 0,
                "ndcg@10": outcome.ndcg_at_10,
                "table_check": (
                    outcome.table_check["crafted_table"]
                    if view == "active"
                    else f"honest tables refused {outcome.table_check['honest_tables_refused']}"
                ),
            }
            table.append(row)
    return table


def write_csv(table: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def markdown(table: list[dict], attacks: list[str]) -> str:
    header = [
        "mode",
        "server sees",
        "target ε",
        "ε spent",
        "noise",
        "AUC bound",
        *attacks,
        "best AUC",
        "in/out game AUC (± se)",
        "NDCG@10",
        "device table check",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table:
        cells = [
            row["mode"],
            row["server_sees"],
            _number(row["target_epsilon"]),
            _number(row["epsilon_spent"]),
            row["noise"],
            f"{row['auc_bound']:.3f}",
            *[f"{row[f'auc_{a}']:.3f}" for a in attacks],
            f"**{row['best_auc']:.3f}** ({row['best_attack']})",
            f"{row['game_auc']:.3f} ± {row['game_auc_se']:.3f} (n={row['game_pairs']})",
            f"{row['ndcg@10']:.4f}",
            row["table_check"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.3g}"


LINES = {
    ("record", "update"): "record-level DP-SGD",
    ("record", "active"): "record-level, crafted table",
    ("user", "update"): "user-level, server sees clipped updates",
    ("user", "aggregate"): "user-level, noisy sum only (secagg, simulated)",
    ("user", "active"): "user-level, crafted table",
}


def plot(table: list[dict], path: Path) -> None:
    """Best AUC (with the bound, dotted) and NDCG@10 against target ε; no DP as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (auc_ax, ndcg_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for (mode, view), label in LINES.items():
        points = sorted(
            (r for r in table if r["mode"] == mode and r["view"] == view),
            key=lambda r: r["target_epsilon"],
        )
        if not points:
            continue
        xs = [r["target_epsilon"] for r in points]
        line = auc_ax.plot(xs, [r["best_auc"] for r in points], marker="o", label=label)[0]
        if view != "active":
            ndcg_ax.plot(xs, [r["ndcg@10"] for r in points], marker="o", label=label)
        if any(r["auc_bound"] < 1 for r in points):
            auc_ax.plot(
                xs,
                [r["auc_bound"] for r in points],
                linestyle=":",
                color=line.get_color(),
                label=f"bound ({label})",
            )
    for row in (r for r in table if r["mode"] == "none" and r["view"] == "update"):
        auc_ax.axhline(row["best_auc"], linestyle="--", color="grey", label="no DP")
        ndcg_ax.axhline(row["ndcg@10"], linestyle="--", color="grey", label="no DP")
    auc_ax.axhline(0.5, color="black", linewidth=0.5)
    for ax, title in ((auc_ax, "best attack's per-user AUC"), (ndcg_ax, "NDCG@10")):
        ax.set_xscale("log")
        ax.set_xlabel("target ε")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    auc_ax.legend(fontsize=7)
    ndcg_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
