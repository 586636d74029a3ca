"""A real Flower deployment on 127.0.0.1: ports, the ``flwr`` connection, and the processes.

The deployment test and the reliability benchmark both start a SuperLink, SuperNodes and
``flwr run`` as separate processes; the resume test and benchmark run ``fedrec simulate`` as one
(:func:`run_fedrec_cli`). Each process gets its own session (process group), so its
``flwr-clientapp`` / ``flower-superexec`` children stop with it, and every one is stopped by its
id whatever happens. Nothing here binds anything but the loopback interface.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode and flwr live here


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, process: subprocess.Popen | None = None, timeout_s: float = 30
) -> None:
    """Until something listens on 127.0.0.1:port; fails early if ``process`` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def loopback_env(home: Path, port: int, *, root_certificates: Path | None = None) -> dict:
    """The environment of every process: ``FLWR_HOME`` with a ``loopback`` connection to the
    SuperLink on ``port`` (TLS with ``root_certificates``, else insecure), and the venv's bin on
    PATH, since the SuperLink and SuperNodes start ``flower-superexec`` / ``flwr-clientapp`` by
    name even when Python runs unactivated."""
    security = (
        f'root-certificates = "{root_certificates}"\n' if root_certificates else "insecure = true\n"
    )
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{port}"\n{security}'
    )
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


class Processes:
    """Every process started, each in its own process group, stopped by its id.

    A name's log is appended to, so a process restarted under the same name keeps one log.
    """

    def __init__(self, logs: Path, env: dict[str, str], cwd: Path) -> None:
        self.logs, self.env, self.cwd = logs, env, cwd
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]],
            cwd=self.cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started.append((name, process))
        return process

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL the process and its group (a crash, as far as Flower can tell)."""
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every live process group, newest first; SIGKILL what has not exited in 10 s."""
        for _, process in reversed(self.started):
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for _, process in reversed(self.started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def tail(self, lines: int = 30) -> str:
        """The last lines of every log, for a failure message."""
        out = []
        for name in dict.fromkeys(name for name, _ in self.started):
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def run_fedrec_cli(args: list[str], log: Path, *, timeout_s: float) -> int:
    """``python -m fedrec.cli ARGS`` in its own session, output to ``log``; its exit code
    (negative: the signal that ended it). Whatever it leaves behind in that session (Ray's workers
    outlive a SIGKILLed driver) is killed by the session's id, whatever happens."""
    env = os.environ | {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedrec.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=timeout_s)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
