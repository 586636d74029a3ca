"""``fedrec submit``: check a run's overrides here, submit it to a SuperLink, report its outcome.

``flwr run`` accepts any run config and exits 0 even when the ServerApp then fails (a misspelt
override shows only in ``flwr ls`` as ``finished:failed``). So this composes the overrides
exactly as the ServerApp will (:func:`fedrec.config.compose`) and checks them against the rules
table before anything is submitted; then submits with ``flwr run --format json``, streams the
run's log (``flwr log``) until the SuperLink reports the run finished, and exits non-zero
unless its status is ``finished:completed``. The run directory is made absolute (it is a path
on the SuperLink's machine: the same one on loopback).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

FINISHED_OK = "finished:completed"


class SubmitError(RuntimeError):
    """The run could not be submitted, or did not complete; the message says why."""


def check_overrides(overrides: Sequence[str]):
    """The simulate config the overrides compose to, checked (raises ``ValueError``)."""
    from fedrec.config import compose
    from fedrec.config.rules import check_simulate

    try:
        cfg = compose("simulate", list(overrides))
    except Exception as err:  # hydra and omegaconf raise their own types
        raise ValueError(f"the overrides do not compose: {err}") from None
    check_simulate(cfg)
    return cfg


def run_config(overrides: Sequence[str], run_dir: Path) -> str:
    """The ``--run-config`` value: TOML basic strings (JSON's escaping is TOML's)."""
    return f"overrides={json.dumps(' '.join(overrides))} run-dir={json.dumps(str(run_dir))}"


def _flwr(*args: str, capture: bool = True, timeout: float | None = 120) -> str:
    flwr = Path(sys.executable).parent / "flwr"
    done = subprocess.run(
        [str(flwr) if flwr.exists() else "flwr", *args],
        capture_output=capture,
        text=True,
        timeout=timeout,
    )
    if capture and done.returncode != 0:
        raise SubmitError(f"flwr {args[0]} failed: {(done.stdout + done.stderr).strip()[-2000:]}")
    return done.stdout if capture else ""


def _status(run_id: str, superlink: Sequence[str]) -> dict:
    answer = json.loads(_flwr("ls", "--run-id", run_id, *superlink, "--format", "json"))
    runs = answer.get("runs") or []
    if not answer.get("success") or not runs:
        raise SubmitError(f"flwr ls did not find run {run_id}: {answer}")
    return runs[0]


def submit(
    overrides: Sequence[str],
    *,
    app: str | Path = ".",
    superlink: str | None = None,
    run_dir: str | Path | None = None,
    stream: bool = True,
    poll_s: float = 2.0,
    timeout_s: float | None = None,
) -> dict:
    """Check, submit and follow one run; return its final ``flwr ls`` entry (with
    ``run-dir``). Raises ``ValueError`` for bad overrides and :class:`SubmitError` when the run
    was not submitted or did not complete."""
    check_overrides(overrides)
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(run_dir or Path("runs") / "flwr" / stamp).absolute()
    target = [superlink] if superlink else []
    submitted = json.loads(
        _flwr(
            "run",
            str(Path(app).absolute()),
            *target,
            "--run-config",
            run_config(overrides, run_dir),
            "--format",
            "json",
        )
    )
    if not submitted.get("success") or "run-id" not in submitted:
        raise SubmitError(f"the SuperLink did not accept the run: {submitted}")
    run_id = str(submitted["run-id"])
    print(f"submitted run {run_id}; results in {run_dir}", flush=True)
    follower = None
    if stream:
        flwr = Path(sys.executable).parent / "flwr"
        follower = subprocess.Popen([str(flwr), "log", run_id, *target, "--stream"])
    started = time.monotonic()
    try:
        while True:
            status = _status(run_id, target)
            if str(status.get("status", "")).startswith("finished"):
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise SubmitError(f"run {run_id} not finished after {timeout_s:.0f} s")
            time.sleep(poll_s)
    finally:
        if follower is not None:
            try:
                follower.wait(timeout=10)
            except subprocess.TimeoutExpired:
                follower.terminate()
                follower.wait(timeout=10)
    status["run-dir"] = str(run_dir)
    if status.get("status") != FINISHED_OK:
        raise SubmitError(
            f"run {run_id} {status.get('status')}: {status.get('status-details', '').strip()}"
        )
    return status
