"""A federation on a Ray cluster of two nodes: the same result as on one machine, and work done
on both nodes (as Ray's own node ids, carried in the replies, show).

The cluster is two ``ray start --block`` processes on 127.0.0.1 (a head and a second node with
its own CPU), started in their own process groups and stopped by them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedrec.config import compose
from fedrec.jobs.simulate import run_simulate

RAY = Path(sys.executable).with_name("ray")
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ray_start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log, "w") as handle:
        return subprocess.Popen(
            [
                str(RAY),
                "start",
                "--block",
                "--num-cpus=1",
                "--node-ip-address=127.0.0.1",
                "--object-store-memory=100000000",
                *args,
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stopped as a whole below
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _alive_nodes(address: str, want: int, processes, logs) -> list[str]:
    """The ids of the cluster's live nodes, once there are ``want`` of them."""
    import ray

    deadline = time.monotonic() + START_TIMEOUT_S
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        while time.monotonic() < deadline:
            for process, log in zip(processes, logs, strict=True):
                if process.poll() is not None:
                    pytest.fail(f"`ray start` exited with {process.returncode}:\n{log.read_text()}")
            alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
            if len(alive) >= want:
                return alive
            time.sleep(0.5)
    finally:
        ray.shutdown()
    pytest.fail(f"the Ray cluster at {address} did not have {want} nodes after {START_TIMEOUT_S} s")


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # ray.init(address=...) sets it; restored
    if not RAY.exists():
        pytest.fail(f"{RAY} is missing: flwr[simulation] installs Ray's CLI beside python")
    address = f"127.0.0.1:{_free_port()}"
    logs = [tmp_path / "ray_head.log", tmp_path / "ray_node.log"]
    processes = [
        _ray_start(
            [
                "--head",
                f"--port={address.split(':')[1]}",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            logs[0],
        )
    ]
    try:
        _alive_nodes(address, 1, processes, logs[:1])
        processes.append(_ray_start([f"--address={address}"], logs[1]))
        nodes = _alive_nodes(address, 2, processes, logs)
        yield address, nodes
    finally:
        for process in reversed(processes):
            _stop(process)


def _cohort_run(run_dir: Path, extra: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
    overrides = [
        "dataset=synthetic_ml100k",
        "federation.num_clients=40",
        "federation.clients_per_round=40",
        "federation.rounds=3",
        "federation.eval_every_rounds=3",
        "federation.local.epochs=1",
        "federation.engine=cohort",
        "federation.cohort_nodes=4",
        "federation.cohort_chunk=8",
        "privacy=record",
        "privacy.noise_multiplier=0.8",
        *extra,
    ]
    run_simulate(compose("simulate", overrides), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    with np.load(run_dir / "item_table.npz") as table:
        return summary, {name: table[name] for name in table.files}


def test_a_cohort_federation_on_two_ray_nodes_equals_the_local_run(tmp_path, two_node_cluster):
    address, node_ids = two_node_cluster
    cluster, cluster_table = _cohort_run(
        tmp_path / "cluster", [f"federation.ray_address={address}"]
    )
    local, local_table = _cohort_run(tmp_path / "local", ["federation.ray_cpus=2"])

    by_node = cluster["ray"]["train_replies_by_node"]
    assert cluster["ray"]["address"] == address
    assert set(by_node) == set(node_ids), (by_node, node_ids)  # both Ray nodes trained users
    assert sum(by_node.values()) == 3 * 4  # every node's reply in every round
    assert len(local["ray"]["train_replies_by_node"]) == 1
    for name, array in local_table.items():
        np.testing.assert_array_equal(cluster_table[name], array)
    assert cluster["final"] == local["final"]
    assert cluster["updates"] == local["updates"]


def test_ray_address_refuses_ray_cpus() -> None:
    with pytest.raises(ValueError, match="ray_cpus=2 with federation.ray_address='auto'"):
        compose("simulate", ["federation.ray_address=auto", "federation.ray_cpus=2"])
