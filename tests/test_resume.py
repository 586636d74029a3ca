"""Crash and resume: a real ``fedrec simulate`` process SIGKILLed mid-run, then resumed.

The server dies (``faults.server_crash_round=3``: SIGKILL once round 3's replies are in) after
every device already trained in round 3 and charged its ledger, but before the server aggregated
or checkpointed it: the worst moment. ``resume=<run dir>`` must then run round 3 again and
round 4, losing no round and counting none twice, leave every ledger at least where it was, and
end with the item table an uninterrupted run with the same seeds ends with. FedAdam is used so
that the server optimizer's moments must be restored too.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from loopback import run_fedrec_cli

from fedrec.config import compose
from fedrec.federation.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fedrec.jobs.simulate import STATE_STORE_FILE, run_simulate
from fedrec.nodes.state_store import DeviceStateStore

ROUNDS, CRASH_ROUND = 4, 3
FEDERATION = [
    "privacy=record",
    "strategy=fedadam",
    "federation.num_clients=10",
    "federation.clients_per_round=10",
    f"federation.rounds={ROUNDS}",
    "federation.local.epochs=1",
    "federation.eval_clients_per_round=0",
    "federation.ray_cpus=2",
]


def fedrec_simulate(args: list[str], log: Path, timeout_s: float = 240) -> int:
    return run_fedrec_cli(["simulate", *args], log, timeout_s=timeout_s)


def rounds_in(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as handle:
        return [int(row["server_round"]) for row in csv.DictReader(handle)]


def epsilon_and_rounds(run_dir: Path) -> dict[int, tuple[float, list[int]]]:
    with DeviceStateStore(run_dir / STATE_STORE_FILE) as store:
        return {
            user: (ledger.epsilon, [e.server_round for e in ledger.entries])
            for user, ledger in store.ledgers().items()
        }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_simulate(compose("simulate", FEDERATION), run_dir)
    return run_dir


def test_sigkilled_run_resumes_without_losing_or_repeating_anything(tmp_path, reference):
    run_dir = tmp_path / "run"
    code = fedrec_simulate(
        [*FEDERATION, f"faults.server_crash_round={CRASH_ROUND}", f"hydra.run.dir={run_dir}"],
        tmp_path / "crashed.log",
    )
    assert code == -signal.SIGKILL, (tmp_path / "crashed.log").read_text()[-3000:]
    assert load_checkpoint(run_dir / CHECKPOINT_FILE).server_round == CRASH_ROUND - 1
    assert not (run_dir / "item_table.npz").exists()
    before = epsilon_and_rounds(run_dir)
    assert len(before) == 10
    # Every device trained in the crashed round and paid for it before the server died.
    assert all(rounds == [1, 2, 3] for _, rounds in before.values())

    code = fedrec_simulate(
        [f"resume={run_dir}", f"hydra.run.dir={tmp_path / 'resume'}"], tmp_path / "resumed.log"
    )
    assert code == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert rounds_in(run_dir) == list(range(1, ROUNDS + 1))  # none lost, none twice
    after = epsilon_and_rounds(run_dir)
    assert set(after) == set(before)
    for user, (epsilon, rounds) in after.items():
        assert rounds == list(range(1, ROUNDS + 1)), user  # round 3 replayed, charged once
        assert epsilon >= before[user][0]
    uninterrupted = epsilon_and_rounds(reference)
    assert {u: r for u, (_, r) in after.items()} == {u: r for u, (_, r) in uninterrupted.items()}
    for user, (epsilon, _) in after.items():
        assert epsilon == pytest.approx(uninterrupted[user][0], rel=1e-12)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["faults"]["resumed_after_round"] == CRASH_ROUND - 1
    assert summary["updates"]["accepted"] == 10 * ROUNDS
    with (
        np.load(run_dir / "item_table.npz") as resumed,
        np.load(reference / "item_table.npz") as ref,
    ):
        assert set(resumed.files) == set(ref.files)
        for name in ref.files:
            np.testing.assert_allclose(resumed[name], ref[name], rtol=1e-5, atol=1e-6)
    with open(reference / "metrics.csv") as handle:
        losses = [float(r["train_loss"]) for r in csv.DictReader(handle)]
    with open(run_dir / "metrics.csv") as handle:
        assert [float(r["train_loss"]) for r in csv.DictReader(handle)] == pytest.approx(losses)


def test_resume_needs_a_checkpoint(tmp_path):
    cfg = compose("simulate", [f"resume={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_simulate(cfg, tmp_path / "log")
