"""The hydra entry point: configs compose, a run writes its directory, bad input fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.cli import compose, config_dir

GROUPS = ["dataset", "model", "training", "eval"]


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={path.stem}"
        for group in GROUPS
        for path in sorted((config_dir() / group).glob("*.yaml"))
    ]
    + [f"+experiment={p.stem}" for p in sorted((config_dir() / "experiment").glob("*.yaml"))],
)
def test_every_config_composes_into_the_typed_schema(override):
    cfg = compose("train", [override])
    assert cfg.dataset.name and cfg.training.epochs >= 1


def test_a_typo_in_a_key_is_an_error():
    with pytest.raises(Exception, match="trainig|Could not override|not in"):
        compose("train", ["training.lr_rate=0.1"])


def run_cli(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "fedrec.cli", "train", f"hydra.run.dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_writes_a_run_directory(tmp_path):
    done = run_cli(tmp_path, "training.epochs=2", "eval_every_epochs=1")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["job"] == "train" and 0 < summary["final"]["ndcg@10"] <= 1
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,ndcg@10") and len(lines) == 3
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert "lr: 0.005" in (tmp_path / "config.yaml").read_text()


def test_bad_input_exits_with_a_message_not_a_traceback(tmp_path):
    done = run_cli(tmp_path, "dataset=generic", f"dataset.path={tmp_path / 'missing.csv'}")
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "missing.csv: file not found" in output and "Traceback" not in output


def test_usage_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "fedrec.cli"], capture_output=True, text=True)
    assert "train" in done.stdout and Path(str(config_dir())).name in done.stdout
