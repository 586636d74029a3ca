"""A run's directory: its resolved config, per-step metrics (CSV), a summary (JSON) and a plot.

Every job writes the same layout so that results are comparable and scripts can read any run.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
METRICS_PNG = "metrics.png"
CONFIG_YAML = "config.yaml"


class RunRecorder:
    """Appends metric rows as they come, so a crashed run still leaves what it measured."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, float]] = []

    def write_config(self, resolved_yaml: str) -> None:
        (self.run_dir / CONFIG_YAML).write_text(resolved_yaml)

    def append(self, row: Mapping[str, float]) -> None:
        """Add one row (e.g. one round). New columns are allowed; the CSV is rewritten whole."""
        self.rows.append(dict(row))
        columns: list[str] = []
        for existing in self.rows:
            columns += [c for c in existing if c not in columns]
        path = self.run_dir / METRICS_CSV
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(path)

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        path = self.run_dir / SUMMARY_JSON
        path.write_text(json.dumps(_finite(summary), indent=2, sort_keys=True) + "\n")
        return path

    def plot(self, x: str, metrics: list[str], title: str) -> Path | None:
        """One panel per metric over ``x``; skipped (None) when there is nothing to draw."""
        series = [m for m in metrics if any(m in row for row in self.rows)]
        if not series or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3.2), squeeze=False)
        for ax, name in zip(axes[0], series, strict=True):
            points = [(row[x], row[name]) for row in self.rows if name in row and x in row]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
            ax.set_xlabel(x)
            ax.set_title(name)
            ax.grid(alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        path = self.run_dir / METRICS_PNG
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than produce an unreadable file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
