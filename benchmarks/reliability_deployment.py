"""The reliability scenario on a real loopback deployment: a SuperLink, N SuperNodes each serving
one user from their own SQLite store, ``flwr run``; mid-run one SuperNode is SIGKILLed for good
and another is SIGKILLed and restarted on the same store.

Used by ``benchmarks/reliability.py --deployment``. Every process is started in its own session
and stopped by its id (its ``flwr-clientapp`` children with it), whatever happens.
"""

from __future__ import annotations

import csv
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loopback import Processes, free_port, loopback_env, wait_for_port  # noqa: E402

from fedrec.client import FedrecClient  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 400  # the synthetic "small" preset the ServerApp's config names


def _make_store(path: Path, first_item: int) -> int:
    with FedrecClient.open(path, num_items=NUM_ITEMS) as client:
        for offset in range(12):
            client.record_interaction(
                (first_item + offset) % NUM_ITEMS,
                category="view",
                rating=None,
                timestamp=1_600_000_000 + offset,
            )
        client.grant_consent(["view"])
        return len(client.interactions())


def _store_facts(path: Path) -> dict:
    with sqlite3.connect(path) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    with FedrecClient.open(path) as client:
        ledger = client.store.ledger()
        return {
            "integrity": integrity,
            "interactions": len(client.interactions()),
            "sent": sorted(s.server_round for s in client.store.sent_rounds()),
            "charged": sorted(e.server_round for e in ledger.entries) if ledger else [],
            "epsilon": ledger.epsilon if ledger else 0.0,
        }


def run_deployment(folder: Path, *, nodes: int, rounds: int, per_round: int, timeout_s: float):
    """Returns the metrics rows, the stores' facts before/after, and the wall time."""
    home, logs = folder / "flwr_home", folder / "logs"
    home.mkdir(parents=True)
    logs.mkdir()
    port = free_port()
    env = loopback_env(home, port)
    stores = [folder / f"user{n}.sqlite" for n in range(nodes)]
    interactions_before = [_make_store(path, 30 * n) for n, path in enumerate(stores)]
    run_dir = folder / "run"
    processes = Processes(logs, env, REPO)

    def supernode(n: int) -> subprocess.Popen:
        return processes.start(
            f"supernode{n}",
            "flower-supernode",
            "--insecure",
            "--superlink",
            f"127.0.0.1:{port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--node-config",
            f'store="{stores[n]}" holdout-latest=1',
        )

    started = time.perf_counter()
    events = []
    try:
        processes.start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        wait_for_port(port, timeout_s=60)
        supernodes = [supernode(n) for n in range(nodes)]
        overrides = (
            f"privacy=record federation.num_clients={nodes} "
            f"federation.clients_per_round={per_round} federation.rounds={rounds} "
            f"federation.timeout_s={timeout_s} federation.eval_clients_per_round=0 "
            "model.embedding_dim=8 federation.local.batch_size=4"
        )
        run = processes.start(
            "flwr-run",
            "flwr",
            "run",
            str(REPO),
            "loopback",
            "--stream",
            "--run-config",
            f'overrides="{overrides}" run-dir="{run_dir}"',
        )
        metrics = run_dir / "metrics.csv"
        deadline = time.monotonic() + 60 * 25
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            if run.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flwr run ended before round 1; see {logs}")
            time.sleep(1)
        processes.kill(supernodes[0])  # gone for good
        events.append(
            f"SuperNode 0 SIGKILLed after round 1 ({time.perf_counter() - started:.0f} s)"
        )
        processes.kill(supernodes[1])
        supernodes[1] = supernode(1)  # back on the same store
        events.append("SuperNode 1 SIGKILLed and restarted on its store")
        code = run.wait(timeout=max(60.0, deadline - time.monotonic()))
        if code != 0:
            raise RuntimeError(f"flwr run exited with {code}; see {logs}")
    finally:
        processes.stop_all()
    wall = time.perf_counter() - started
    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["server_round"]) > 0]
    facts = [_store_facts(path) for path in stores]
    return {
        "rows": rows,
        "wall_s": wall,
        "events": events,
        "under": sum(len(set(f["sent"]) - set(f["charged"])) for f in facts),
        "rows_lost": sum(
            max(0, before - f["interactions"])
            for before, f in zip(interactions_before, facts, strict=True)
        )
        + sum(f["integrity"] != "ok" for f in facts),
        "facts": facts,
    }
