"""``fedrec sweep``: privacy budget against accuracy, one federated run per (mode, ε, seed).

Writes ``sweep.csv``, ``sweep.md`` (mean ± std over seeds) and ``pareto.png`` (ε on a log axis
against each metric, one line per mode, error bars over seeds) in the run directory.

Beside every federated point the sweep puts the most-popular ranking released under the same
guarantee and budget (``references: [popularity]``, :mod:`fedrec.jobs.popularity`): a private
model that scores below it has bought nothing with its budget, and the exact popularity ranking
(ε = ∞) shows how much of the non-private model's score needs no personalization at all.

The two modes' ε are different guarantees and the table says which: ``record`` is per user
about one interaction (each device solves its own σ for the budget; ε spent is the largest over
users), ``user`` is about a user's whole participation (the server solves z for the budget over
the planned rounds; ε spent is the server accountant's).

``mode_overrides`` gives each mode its own recipe on top of ``simulate_overrides``: DP-SGD
wants a clipping norm, learning rates and round counts that would handicap the non-private
run, and the non-private row is the baseline every ratio is taken against, so it must be the
best non-private recipe, not the DP recipe with the noise turned off. ``budget_overrides``
replaces a mode's recipe for the budgets up to a bound (a small budget can afford a different
model than a large one); the table's ``recipe`` column says which one each row ran.
"""

from __future__ import annotations

import csv
import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedrec.run_dir import RunRecorder

logger = logging.getLogger("fedrec")


@dataclass(frozen=True)
class SweepMode:
    """How a sweep realises a budget ε in one privacy mode, and where it reads the ε spent."""

    overrides: Callable[[float], list[str]]
    epsilon_key: str  # in the dict run_simulate returns
    guarantee: str  # what its ε refers to, for the table
    protects: str = ""  # the unit its ε protects, for the plot's legend


SWEEP_MODES: dict[str, SweepMode] = {
    "none": SweepMode(lambda eps: ["privacy=none"], "epsilon_max", "none (no DP)"),
    "record": SweepMode(
        lambda eps: ["privacy=budget", f"privacy.target_epsilon={eps}"],
        "epsilon_max",
        "record-level, max over users",
        "interaction",
    ),
    "user": SweepMode(
        lambda eps: [
            "privacy=user",
            f"privacy.user_target_epsilon={eps}",
            "privacy.solve_user_noise_multiplier=true",
        ],
        "user_level_epsilon",
        "user-level (server)",
        "user",
    ),
}
MODES = tuple(m for m in SWEEP_MODES if m != "none")
# What a row is: a fedrec federation (``fedrec simulate``), or a reference computed in process.
RUNS = ("federated", "popularity")
REFERENCES = ("popularity",)


@dataclass
class BudgetRecipe:
    """A mode's recipe for every budget ε ≤ ``up_to`` (the smallest bound that fits wins)."""

    up_to: float = math.inf
    overrides: list[str] = field(default_factory=list)


@dataclass
class SweepJobConfig:
    """The schema of ``configs/sweep.yaml``. ``inf`` in ``epsilons`` is the non-private run."""

    modes: list[str] = field(default_factory=lambda: ["record", "user"])
    epsilons: list[float] = field(default_factory=lambda: [0.5, 1, 2, 4, 8, 16, math.inf])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    simulate_overrides: list[str] = field(default_factory=list)
    mode_overrides: dict[str, list[str]] = field(default_factory=dict)  # mode -> overrides
    budget_overrides: dict[str, list[BudgetRecipe]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@20", "sampled_hr@10"])
    # Reference rows computed beside every point (no federated run): see the module docstring.
    references: list[str] = field(default_factory=lambda: ["popularity"])

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown:
            raise ValueError(f"sweep.modes {unknown}; accepted: {', '.join(MODES)}")
        unknown = sorted(set(self.references) - set(REFERENCES))
        if unknown:
            raise ValueError(f"sweep.references {unknown}; accepted: {', '.join(REFERENCES)}")
        unknown = sorted(set(self.mode_overrides) - set(SWEEP_MODES))
        if unknown:
            raise ValueError(
                f"sweep.mode_overrides names {unknown}; accepted: {', '.join(SWEEP_MODES)}"
            )
        unknown = sorted(set(self.budget_overrides) - set(MODES))
        if unknown:
            raise ValueError(
                f"sweep.budget_overrides names {unknown}; accepted: {', '.join(MODES)}"
            )
        for mode, recipes in self.budget_overrides.items():
            # Hydra hands nested entries over as plain dicts: type them here, once.
            recipes[:] = [_budget_recipe(mode, r) for r in recipes]
            if any(not r.up_to > 0 or math.isinf(r.up_to) for r in recipes):
                raise ValueError(
                    f"sweep.budget_overrides.{mode}: up_to must be a finite ε > 0 (the mode's "
                    "recipe in mode_overrides covers every budget above the bounds)"
                )
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ValueError("sweep.epsilons must be positive numbers (inf for no DP)")
        if not self.seeds:
            raise ValueError("sweep.seeds must not be empty")


def _budget_recipe(mode: str, entry: BudgetRecipe | dict) -> BudgetRecipe:
    if isinstance(entry, BudgetRecipe):
        return entry
    unknown = sorted(set(entry) - {"up_to", "overrides"})
    if unknown:
        raise ValueError(
            f"sweep.budget_overrides.{mode}: unknown keys {unknown}; expected up_to, overrides"
        )
    return BudgetRecipe(**entry)


def recipe_for(cfg: SweepJobConfig, mode: str, eps: float) -> list[str]:
    """The recipe a point runs: the budget's (``budget_overrides``), else the mode's."""
    fitting = [r for r in cfg.budget_overrides.get(mode, []) if eps <= r.up_to]
    if fitting:
        return list(min(fitting, key=lambda r: r.up_to).overrides)
    return list(cfg.mode_overrides.get(mode, []))


def run_points(cfg: SweepJobConfig) -> list[tuple[str, float, int, list[str]]]:
    """(mode, ε, seed, simulate overrides) per run: the shared ones, the recipe, then the
    budget, so a recipe cannot override the budget the sweep is measuring."""
    points = []

    def point(mode: str, eps: float, seed: int) -> tuple[str, float, int, list[str]]:
        return mode, eps, seed, [*recipe_for(cfg, mode, eps), *SWEEP_MODES[mode].overrides(eps)]

    for seed in cfg.seeds:
        if any(math.isinf(e) for e in cfg.epsilons):
            points.append(point("none", math.inf, seed))
        for mode in cfg.modes:
            for eps in (e for e in cfg.epsilons if not math.isinf(e)):
                points.append(point(mode, eps, seed))
    return points


def run_sweep(cfg: SweepJobConfig, run_dir: str | Path) -> dict[str, float]:
    from fedrec.config import compose
    from fedrec.jobs.popularity import popularity_point
    from fedrec.jobs.simulate import run_simulate

    run_dir = Path(run_dir)
    rows: list[dict] = []
    for mode, eps, seed, overrides in run_points(cfg):
        sim_cfg = compose("simulate", [*cfg.simulate_overrides, *overrides, f"seed={seed}"])
        point_dir = run_dir / f"{mode}_eps{eps:g}_seed{seed}"
        started = time.perf_counter()
        final = run_simulate(sim_cfg, point_dir)
        recipe = " ".join(recipe_for(cfg, mode, eps)) or "-"
        rows.append(_row("federated", mode, eps, seed, final, started, cfg) | {"recipe": recipe})
        if "popularity" in cfg.references:
            started = time.perf_counter()
            final = popularity_point(sim_cfg, mode, eps, seed)
            rows.append(_row("popularity", mode, eps, seed, final, started, cfg) | {"recipe": "-"})
    with (run_dir / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarize(rows, cfg.metrics)
    (run_dir / "sweep.md").write_text(markdown(summary, cfg.metrics))
    plot(summary, cfg.metrics, run_dir / "pareto.png")
    RunRecorder(run_dir).write_summary({"job": "sweep", "points": summary})
    best = max((s for s in summary if s["run"] == "federated"), key=lambda s: s["target_epsilon"])
    return {m: best[f"{m}_mean"] for m in cfg.metrics}


def _row(
    run: str, mode: str, eps: float, seed: int, final: dict, started: float, cfg: SweepJobConfig
) -> dict:
    epsilon_key = "epsilon_spent" if run == "popularity" else SWEEP_MODES[mode].epsilon_key
    row = {
        "run": run,
        "mode": mode,
        "target_epsilon": eps,
        "seed": seed,
        "epsilon_spent": final.get(epsilon_key, 0.0),
        "guarantee": SWEEP_MODES[mode].guarantee,
        "wall_time_s": time.perf_counter() - started,
    }
    row |= {m: final.get(m, math.nan) for m in cfg.metrics}
    logger.info(
        "sweep point %s %s ε=%g seed %d: %s",
        run,
        mode,
        eps,
        seed,
        ", ".join(f"{m} {row[m]:.4f}" for m in cfg.metrics),
    )
    return row


def summarize(rows: list[dict], metrics: list[str]) -> list[dict]:
    """Mean and std over seeds per (run, mode, ε); the federated rows first."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["mode"], row["target_epsilon"]), []).append(row)
    summary = []
    for (run, mode, eps), members in sorted(
        groups.items(), key=lambda kv: (RUNS.index(kv[0][0]), kv[0][1], kv[0][2])
    ):
        entry = {
            "run": run,
            "mode": mode,
            "guarantee": SWEEP_MODES[mode].guarantee,
            "target_epsilon": eps,
            "seeds": len(members),
            "recipe": members[0]["recipe"],
        }
        for name in [*metrics, "epsilon_spent", "wall_time_s"]:
            values = [m[name] for m in members]
            entry[f"{name}_mean"] = statistics.mean(values)
            entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(summary: list[dict], metrics: list[str]) -> str:
    """The table, with the first metric also as a ratio of the non-private federation's (the
    goals of the privacy issue are stated that way); "–" when the sweep has no ε = ∞ federation.
    """
    baseline = next(
        (
            s[f"{metrics[0]}_mean"]
            for s in summary
            if s["mode"] == "none" and s["run"] == "federated"
        ),
        None,
    )
    header = ["run", "mode", "ε refers to", "target ε", "ε spent", *metrics]
    header += [f"{metrics[0]} / no DP", "wall (s)", "seeds", "recipe"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        cells = [
            s["run"],
            s["mode"],
            s["guarantee"],
            f"{s['target_epsilon']:g}",
            f"{s['epsilon_spent_mean']:.3g}",
        ]
        cells += [f"{s[f'{m}_mean']:.4f} ± {s[f'{m}_std']:.4f}" for m in metrics]
        ratio = s[f"{metrics[0]}_mean"] / baseline if baseline else None
        cells.append("–" if ratio is None else f"{ratio:.2f}")
        cells += [f"{s['wall_time_s_mean']:.0f}", str(s["seeds"])]
        cells.append(f"`{s['recipe']}`" if s["recipe"] != "-" else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], metrics: list[str], path: Path) -> None:
    """ε (log axis) against each metric: one solid line per DP mode of the federation, the
    popularity reference in the same colour dotted; the non-private rows are horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({s["mode"] for s in summary if s["mode"] != "none"})
    colours = {mode: f"C{rank}" for rank, mode in enumerate(modes)}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for run, style in (("federated", "-"), ("popularity", ":")):
            for mode in modes:
                points = [s for s in summary if s["mode"] == mode and s["run"] == run]
                if not points:
                    continue
                label = f"{mode}-level DP (ε per {SWEEP_MODES[mode].protects})"
                ax.errorbar(
                    [s["target_epsilon"] for s in points],
                    [s[f"{metric}_mean"] for s in points],
                    yerr=[s[f"{metric}_std"] for s in points],
                    marker="o" if run == "federated" else "s",
                    markersize=4,
                    linestyle=style,
                    color=colours[mode],
                    capsize=3,
                    label=label if run == "federated" else f"most popular, {label}",
                )
        for s in (s for s in summary if s["mode"] == "none"):
            federated = s["run"] == "federated"
            ax.axhline(
                s[f"{metric}_mean"],
                linestyle="--" if federated else ":",
                color="grey",
                label="no DP (ε = ∞)" if federated else "most popular, no DP",
            )
        ax.set_xscale("log")
        ax.set_xlabel("target ε")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
