"""A real Flower simulation (run_simulation, Ray) on real ML-100K users.

Every message a client sends is recorded by a client mod (it runs inside the ClientApp, in the
simulation's worker processes, and appends one JSON line per reply), so the tests inspect what
actually left the devices.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from opacus.accountants import RDPAccountant

from fedrec.config import compose
from fedrec.federation.server_step import server_lr_factor
from fedrec.jobs.simulate import prepare_federation, run_simulate
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WORKER_KEY

ALLOWED_TRAIN_METRICS = {"num-examples", "train_loss", "epsilon", "local_steps"}


class MessageAudit:
    """Client mod: record each reply's records, arrays (name, shape, dtype) and metrics.

    ``corrupt`` maps a partition id to a way of breaking that client's training update
    after it is recorded, to play a faulty or malicious client.
    """

    def __init__(self, path: str, corrupt: dict[int, str] | None = None) -> None:
        self.path = path
        self.corrupt = corrupt or {}

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "query":  # the server's discovery, once per node
            return reply
        partition = int(context.node_config["partition-id"])
        entry = {
            "partition": partition,
            "type": msg.metadata.message_type,
            "round": int(msg.content[CONFIG_KEY]["server-round"]),
            "lr": float(msg.content[CONFIG_KEY]["training.lr"]),
            "error": reply.has_error(),
        }
        if not reply.has_error():
            content = reply.content
            entry["records"] = sorted(
                [f"array:{k}" for k in content.array_records]
                + [f"metric:{k}" for k in content.metric_records]
                + [f"config:{k}" for k in content.config_records]
            )
            entry["arrays"] = {
                name: [list(array.shape), array.dtype]
                for record in content.array_records.values()
                for name, array in record.items()
            }
            entry["metrics"] = {k: v for r in content.metric_records.values() for k, v in r.items()}
            entry["configs"] = {k: dict(r) for k, r in content.config_records.items()}
            how = self.corrupt.get(partition)
            if how and msg.metadata.message_type == "train":
                arrays = {k: v.numpy().copy() for k, v in content[ARRAYS_KEY].items()}
                if how == "shape":
                    arrays["item_bias.weight"] = np.zeros((3, 1), dtype=np.float32)
                elif how == "nan":
                    arrays["item_embedding.weight"][0, 0] = np.nan
                content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        line = json.dumps(entry) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())  # one write: lines from parallel workers do not mix
        finally:
            os.close(fd)
        return reply


def read_audit(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def read_rounds(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


FEDERATION = [
    "dataset=synthetic_ml100k",
    "federation.num_clients=100",
    "federation.clients_per_round=100",
    "federation.rounds=4",
    "federation.local.epochs=2",
    "federation.local.optimizer=adam",
    "federation.local.lr=0.01",
    "strategy.server_lr=40",
    "federation.ray_cpus=2",
]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plain")
    cfg = compose("simulate", FEDERATION)
    audit = run_dir / "audit.jsonl"
    final = run_simulate(cfg, run_dir, client_mods=[MessageAudit(str(audit))])
    return cfg, run_dir, final, read_audit(audit)


def test_federation_improves_over_the_untrained_model(plain_run):
    _, run_dir, final, _ = plain_run
    rows = read_rounds(run_dir)
    assert [int(r["server_round"]) for r in rows] == [0, 1, 2, 3, 4]
    before, after = float(rows[0]["ndcg@10"]), float(rows[-1]["ndcg@10"])
    assert after > before + 0.02, (before, after)
    assert float(rows[-1]["sampled_hr@10"]) > float(rows[0]["sampled_hr@10"])
    assert all(int(r["accepted"]) == 100 for r in rows[1:])
    assert final["ndcg@10"] == pytest.approx(after)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == {
        "sampled": 400,
        "accepted": 400,
        "failed": 0,
        "rejected": 0,
        "budget_exhausted": 0,
        "declined": 0,
    }
    assert (run_dir / "metrics.png").exists() and (run_dir / "item_table.npz").exists()


def test_clients_send_only_item_side_tensors_and_scalars(plain_run):
    cfg, _, _, audit = plain_run
    dim = cfg.model.embedding_dim
    train = [e for e in audit if e["type"] == "train"]
    evaluate = [e for e in audit if e["type"] == "evaluate"]
    assert len(train) == 400 and len(evaluate) == 100 * 3  # rounds 0, 2 and 4
    workers = set()
    for entry in train:
        assert entry["records"] == [
            f"array:{ARRAYS_KEY}",
            f"config:{WORKER_KEY}",
            f"metric:{METRICS_KEY}",
        ]
        # The one config record names the Ray node that did the work (where a run on a
        # cluster ran), nothing of the user's.
        assert list(entry["configs"][WORKER_KEY]) == ["ray_node"]
        workers.add(entry["configs"][WORKER_KEY]["ray_node"])
        assert entry["arrays"] == {
            "item_embedding.weight": [[1682, dim], "float32"],
            "item_bias.weight": [[1682, 1], "float32"],
        }
        assert set(entry["metrics"]) == ALLOWED_TRAIN_METRICS
        assert entry["metrics"]["num-examples"] == 1  # uniform weighting: no log size sent
    assert len(workers) == 1 and all(len(w) == 56 and int(w, 16) >= 0 for w in workers)
    for entry in evaluate:
        assert entry["records"] == [f"metric:{METRICS_KEY}"] and entry["arrays"] == {}
        assert all(isinstance(v, int | float) for v in entry["metrics"].values())
        assert not {"user", "items", "user_embedding.weight"} & set(entry["metrics"])


@pytest.fixture(scope="module")
def private_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("private")
    overrides = [
        "dataset=synthetic_ml100k",
        "privacy=record",
        "federation.num_clients=8",
        "federation.clients_per_round=8",
        "federation.rounds=3",
        "federation.eval_clients_per_round=0",
        "federation.local.batch_size=16",
        "federation.ray_cpus=2",
        "strategy.local_lr_schedule=cosine",
    ]
    cfg = compose("simulate", overrides)
    audit = run_dir / "audit.jsonl"
    corrupt = {0: "shape", 1: "nan"}
    final = run_simulate(cfg, run_dir, client_mods=[MessageAudit(str(audit), corrupt)])
    return cfg, run_dir, final, read_audit(audit)


def test_per_client_epsilon_grows_and_matches_opacus(private_run):
    cfg, _, _, audit = private_run
    _, source, _ = prepare_federation(cfg)
    privacy, fed = cfg.privacy, cfg.federation
    for partition in range(8):
        rounds = sorted(
            (e for e in audit if e["partition"] == partition and e["type"] == "train"),
            key=lambda e: e["round"],
        )
        assert [e["round"] for e in rounds] == [1, 2, 3]
        size = len(source.local_data({"partition-id": partition})[1].train_items)
        batches = math.ceil(size / min(fed.local.batch_size, size))
        epsilons = []
        for done, entry in enumerate(rounds, start=1):
            assert entry["metrics"]["local_steps"] == fed.local.epochs * batches
            accountant = RDPAccountant()
            accountant.history = [
                (privacy.noise_multiplier, 1 / batches, done * fed.local.epochs * batches)
            ]
            expected = accountant.get_epsilon(delta=privacy.delta)
            assert entry["metrics"]["epsilon"] == pytest.approx(expected, rel=1e-9)
            epsilons.append(entry["metrics"]["epsilon"])
        assert epsilons[0] < epsilons[1] < epsilons[2]


def test_devices_train_at_the_scheduled_local_rate(private_run):
    cfg, _, _, audit = private_run
    base = cfg.federation.local.lr
    train = [e for e in audit if e["type"] == "train"]
    assert {e["round"] for e in train} == {1, 2, 3}
    for entry in train:
        factor = server_lr_factor("cosine", entry["round"], 3)  # 1, 0.75, 0.25
        assert entry["lr"] == pytest.approx(base * factor, rel=1e-6)


def test_malformed_updates_are_dropped_and_rounds_complete(private_run):
    _, run_dir, final, _ = private_run
    rows = read_rounds(run_dir)
    assert [int(r["server_round"]) for r in rows] == [1, 2, 3]
    for row in rows:
        assert (int(row["sampled"]), int(row["accepted"]), int(row["rejected"])) == (8, 6, 2)
    assert final["epsilon_max"] > 0
    table = np.load(run_dir / "item_table.npz")
    assert all(np.isfinite(table[name]).all() for name in table.files)


@pytest.mark.parametrize("engine", ["per_user", "cohort"])
def test_users_at_budget_sit_out_and_the_run_finishes(tmp_path, engine):
    # Each device solves σ for one planned round; every later round would overspend, so all
    # four users train in round 1 only and report budget_exhausted in rounds 2 and 3.
    overrides = [
        f"federation.engine={engine}",
        "dataset=synthetic_ml100k",
        "privacy=budget",
        "privacy.target_epsilon=4",
        "privacy.planned_rounds=1",
        "federation.num_clients=4",
        "federation.clients_per_round=4",
        "federation.rounds=3",
        "federation.eval_clients_per_round=0",
        "federation.ray_cpus=2",
    ]
    final = run_simulate(compose("simulate", overrides), tmp_path)
    rows = read_rounds(tmp_path)
    assert [(int(r["accepted"]), int(r["budget_exhausted"])) for r in rows] == [
        (4, 0),
        (0, 4),
        (0, 4),
    ]
    assert 3.5 < final["epsilon_max"] <= 4.0  # spent, within the budget
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["updates"]["budget_exhausted"] == 8 and summary["updates"]["failed"] == 0
    assert summary["epsilon_per_user"]["budget"] == 4.0
    # Sit-outs are counted per round (8); the users who hit their budget are 4, each once.
    assert [int(r["users_at_budget"]) for r in rows] == [0, 4, 4]
    assert summary["epsilon_per_user"]["users_at_budget"] == 4
