"""A real Flower deployment on 127.0.0.1, driven by the operator walk-through of the docs.

``docs/examples/operator_walkthrough.sh`` (the script ``docs/operators.md`` walks through) makes
the certificates and node keys (``fedrec certs``), starts a SuperLink with TLS and SuperNode
authentication, creates two users' stores (``fedrec store create``: one consents, one does not),
starts a SuperNode per store and submits a checked run (``fedrec submit``). Each message starts
a fresh ``flwr-clientapp`` process that imports torch and Opacus, which is most of the test's
time. The script stops every process it started by its process group, whatever happens.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from loopback import BIN

from fedrec.client import FedrecClient

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "examples" / "operator_walkthrough.sh"
NUM_ITEMS, DIM = 400, 8  # the synthetic "small" preset the run's config names; the script's dim


def _fedrec(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedrec.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )


@pytest.mark.skipif(shutil.which("flower-superlink", path=str(BIN)) is None, reason="no flwr")
def test_the_operator_walkthrough_deploys_with_tls_and_node_auth(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env |= {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    done = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:] + logs
    assert "finished:completed" in done.stdout
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    trained = rows[-1]
    assert [row["server_round"] for row in rows] == ["0", "1"]
    # Alice trained; Bob declined (no consent): his metrics-only reply is counted as declined,
    # not as a rejected update, and the round goes on with Alice's update; only Alice is
    # evaluated.
    assert (trained["sampled"], trained["accepted"], trained["declined"]) == ("2", "1", "1")
    assert (trained["rejected"], trained["failed"], trained["refused"]) == ("0", "0", "0")
    assert float(trained["epsilon_max"]) > 0 and float(trained["train_loss"]) > 0
    assert [float(row["num_users"]) for row in rows] == [1.0, 1.0]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["updates"]["accepted"] == 1 and summary["num_items"] == NUM_ITEMS
    with FedrecClient.open(tmp_path / "alice.sqlite") as alice:
        assert [(r.item, r.category) for r in alice.interactions()] == [
            (i, ("view", "rating", "purchase")[i % 3]) for i in range(12)
        ]  # the log never left and was never changed
        sent = alice.store.sent_rounds()
        assert [s.server_round for s in sent] == [1]
        assert {t.name: t.shape for t in sent[0].tensors} == {
            "item_embedding.weight": (NUM_ITEMS, DIM),
            "item_bias.weight": (NUM_ITEMS, 1),
        }
        assert alice.privacy_report().epsilon == pytest.approx(float(sent[0].metrics["epsilon"]))
    with FedrecClient.open(tmp_path / "bob.sqlite") as bob:
        assert bob.store.sent_rounds() == [] and bob.store.ledger() is None


def test_submit_refuses_a_misspelt_override_before_contacting_anything(tmp_path):
    done = _fedrec("submit", "--superlink", "nowhere", "federation.local.batch_sizee=4")
    assert done.returncode == 2
    assert "batch_sizee" in done.stderr and "Traceback" not in done.stderr
    refused = _fedrec("submit", "federation.engine=cohort", "faults.dropout_rate=0.1")
    assert refused.returncode == 2 and "engine=per_user" in refused.stderr


def test_certs_and_stores_refuse_to_overwrite_and_say_why(tmp_path):
    assert _fedrec("certs", str(tmp_path / "keys"), "--node", "n0").returncode == 0
    for name in ("ca.crt", "server.pem", "server.key", "n0", "n0.pub"):
        assert (tmp_path / "keys" / name).is_file()
    assert oct((tmp_path / "keys" / "server.key").stat().st_mode)[-3:] == "600"
    again = _fedrec("certs", str(tmp_path / "keys"))
    assert again.returncode == 2 and "exist" in again.stderr
    store = tmp_path / "u.sqlite"
    log = tmp_path / "log.csv"
    log.write_text("item,timestamp\n3,1\n999,2\n")
    bad = _fedrec("store", "create", str(store), "--num-items", "10", "--interactions", str(log))
    assert bad.returncode == 2 and "log.csv:3" in bad.stderr and not store.exists()
    log.write_text("item,timestamp\n3,1\n4,2\n")
    made = _fedrec("store", "create", str(store), "--num-items", "10", "--interactions", str(log))
    assert made.returncode == 0 and json.loads(made.stdout)["interactions"] == {"view": 2}
    twice = _fedrec("store", "create", str(store), "--num-items", "10")
    assert twice.returncode == 2 and "exists" in twice.stderr
