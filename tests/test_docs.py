"""The documentation: the mkdocs site builds with no warning, the README stays a short entry
point, and what the pages show is what the code does (the app team's example runs, the round
config table is the one the code generates)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 220


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed: pip install -e .[docs] (make setup does)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): "
        "move the details into a page under docs/"
    )


def test_app_team_example_runs(tmp_path: Path) -> None:
    """docs/app-teams.md includes docs/examples/app_team.py; it must keep working."""
    result = subprocess.run(
        [sys.executable, str(REPO / "docs" / "examples" / "app_team.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sends" in result.stdout


def test_app_teams_page_holds_the_round_config_table() -> None:
    from fedrec.protocol.settings import round_config_table

    page = (REPO / "docs" / "app-teams.md").read_text(encoding="utf-8")
    assert round_config_table() in page, (
        "docs/app-teams.md must hold fedrec.protocol.settings.round_config_table() verbatim: "
        "paste its current output under 'The round config'"
    )
