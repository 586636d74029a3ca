"""Shared fixtures. Two kinds of data:

- ``ml100k_dir`` / ``ml100k_log``: the real MovieLens 100K files from ../shared/data (or
  ``$FEDREC_DATA_DIR``), for the tests that are *about* those files. Where the files are absent
  these tests skip with a one-line reason; with ``FEDREC_REQUIRE_REAL_DATA=1`` (set by
  ``.ci/run``) that skip is a failure instead, so CI can never silently skip them.
- ``ML100K_SHAPED``: the seeded synthetic log shaped like ML-100K (943 users, 1,682 items,
  ~100K interactions, ``configs/dataset/synthetic_ml100k.yaml``). Every behaviour test (the
  federation, privacy, audit, poisoning, engine equality, ...) runs on it, so a fresh clone with
  no MovieLens files runs the same tests as CI, on the same data.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from fedrec.data import LOADERS, DatasetSpec, load_split, shared_data_dir  # noqa: E402

REQUIRE_REAL_DATA_ENV = "FEDREC_REQUIRE_REAL_DATA"
# hydra overrides that select the ML-100K-shaped synthetic log
ML100K_SHAPED = ["dataset=synthetic_ml100k"]
ML100K_SHAPED_SPEC = DatasetSpec(name="synthetic", options={"preset": "ml-100k", "seed": 0})


def require_real_file(path) -> None:
    """Skip (or, under ``FEDREC_REQUIRE_REAL_DATA=1``, fail) when a real data file is absent."""
    if path.exists():
        return
    reason = f"needs the real MovieLens 100K file {path} (set FEDREC_DATA_DIR)"
    if os.environ.get(REQUIRE_REAL_DATA_ENV) == "1":
        pytest.fail(f"{reason}; {REQUIRE_REAL_DATA_ENV}=1 forbids skipping it")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def ml100k_dir():
    path = shared_data_dir() / "ml-100k"
    require_real_file(path / "u.data")
    return path


@pytest.fixture(scope="session")
def ml100k_log(ml100k_dir):
    """The raw log: ratings and timestamps as in the file."""
    return LOADERS.get("movielens_100k")(ml100k_dir)


@pytest.fixture(scope="session")
def ml100k_shaped_split():
    """The leave-one-out split of the ML-100K-shaped synthetic log."""
    return load_split(ML100K_SHAPED_SPEC)


@pytest.fixture(scope="session")
def ml100k_shaped_log():
    """The raw ML-100K-shaped synthetic log (ratings and timestamps, before any split)."""
    return LOADERS.get("synthetic")(preset="ml-100k", seed=0)
