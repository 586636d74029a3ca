"""Shared fixtures: the real MovieLens 100K files from ../shared/data (or $FEDREC_DATA_DIR)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

from fedrec.data import LOADERS, shared_data_dir  # noqa: E402


def _ml100k_dir():
    return shared_data_dir() / "ml-100k"


@pytest.fixture(scope="session")
def ml100k_dir():
    path = _ml100k_dir()
    if not (path / "u.data").exists():
        pytest.fail(
            f"MovieLens 100K not found at {path}; set FEDREC_DATA_DIR to the shared data folder"
        )
    return path


@pytest.fixture(scope="session")
def ml100k_log(ml100k_dir):
    """The raw log: ratings and timestamps as in the file."""
    return LOADERS.get("movielens_100k")(ml100k_dir)
