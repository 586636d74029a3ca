"""``fedrec sweep``: privacy budget against accuracy, one federated run per (mode, ε, seed).

Writes ``sweep.csv``, ``sweep.md`` (mean ± std over seeds) and ``pareto.png`` (ε on a log axis
against each metric, one line per mode, error bars over seeds) in the run directory.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedrec.run_dir import RunRecorder

logger = logging.getLogger("fedrec")

# privacy mode of the sweep → the simulate overrides that realise a budget in it
MODE_OVERRIDES = {
    "record": lambda eps: ["privacy=budget", f"privacy.target_epsilon={eps}"],
}
MODES = tuple(MODE_OVERRIDES)


@dataclass
class SweepJobConfig:
    """The schema of ``configs/sweep.yaml``. ``inf`` in ``epsilons`` is the non-private run."""

    modes: list[str] = field(default_factory=lambda: ["record"])
    epsilons: list[float] = field(default_factory=lambda: [0.5, 1, 2, 4, 8, 16, math.inf])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    simulate_overrides: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@20", "sampled_hr@10"])

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"sweep.modes {unknown}; accepted: {', '.join(MODES)}")
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ValueError("sweep.epsilons must be positive numbers (inf for no DP)")
        if not self.seeds:
            raise ValueError("sweep.seeds must not be empty")


def run_points(cfg: SweepJobConfig) -> list[tuple[str, float, int, list[str]]]:
    points = []
    for seed in cfg.seeds:
        if any(math.isinf(e) for e in cfg.epsilons):
            points.append(("none", math.inf, seed, ["privacy=none"]))
        for mode in cfg.modes:
            for eps in (e for e in cfg.epsilons if not math.isinf(e)):
                points.append((mode, eps, seed, MODE_OVERRIDES[mode](eps)))
    return points


def run_sweep(cfg: SweepJobConfig, run_dir: str | Path) -> dict[str, float]:
    from fedrec.cli import compose
    from fedrec.jobs.simulate import run_simulate

    run_dir = Path(run_dir)
    rows: list[dict] = []
    for mode, eps, seed, overrides in run_points(cfg):
        sim_cfg = compose("simulate", [*cfg.simulate_overrides, *overrides, f"seed={seed}"])
        point_dir = run_dir / f"{mode}_eps{eps:g}_seed{seed}"
        started = time.perf_counter()
        final = run_simulate(sim_cfg, point_dir)
        row = {
            "mode": mode,
            "target_epsilon": eps,
            "seed": seed,
            "epsilon_spent_max": final.get("epsilon_max", 0.0),
            "epsilon_spent_median": final.get("epsilon_median", 0.0),
            "wall_time_s": time.perf_counter() - started,
        }
        row |= {m: final.get(m, math.nan) for m in cfg.metrics}
        rows.append(row)
        logger.info(
            "sweep point %s ε=%g seed %d: %s",
            mode,
            eps,
            seed,
            ", ".join(f"{m} {row[m]:.4f}" for m in cfg.metrics),
        )
    with (run_dir / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, cfg.metrics)
    (run_dir / "sweep.md").write_text(markdown(summary, cfg.metrics))
    plot(summary, cfg.metrics, run_dir / "pareto.png")
    RunRecorder(run_dir).write_summary({"job": "sweep", "points": summary})
    best = max(summary, key=lambda s: s["target_epsilon"])
    return {m: best[f"{m}_mean"] for m in cfg.metrics}


def summarize(rows: list[dict], metrics: list[str]) -> list[dict]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["target_epsilon"]), []).append(row)
    summary = []
    for (mode, eps), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        entry = {"mode": mode, "target_epsilon": eps, "seeds": len(members)}
        for name in [*metrics, "epsilon_spent_max", "wall_time_s"]:
            values = [m[name] for m in members]
            entry[f"{name}_mean"] = statistics.mean(values)
            entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(summary: list[dict], metrics: list[str]) -> str:
    header = ["mode", "target ε", "ε spent (max)", *metrics, "wall (s)", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [s["mode"], f"{s['target_epsilon']:g}", f"{s['epsilon_spent_max_mean']:.3g}"]
        cells += [f"{s[f'{m}_mean']:.4f} ± {s[f'{m}_std']:.4f}" for m in metrics]
        cells += [f"{s['wall_time_s_mean']:.0f}", str(s["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], metrics: list[str], path: Path) -> None:
    """ε (log axis) against each metric; the non-private run is a dashed reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for mode in sorted({s["mode"] for s in summary if s["mode"] != "none"}):
            points = [s for s in summary if s["mode"] == mode]
            ax.errorbar(
                [s["target_epsilon"] for s in points],
                [s[f"{metric}_mean"] for s in points],
                yerr=[s[f"{metric}_std"] for s in points],
                marker="o",
                capsize=3,
                label=f"{mode}-level DP",
            )
        for s in (s for s in summary if s["mode"] == "none"):
            ax.axhline(s[f"{metric}_mean"], linestyle="--", color="grey", label="no DP (ε = ∞)")
        ax.set_xscale("log")
        ax.set_xlabel("target ε per user")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
