"""User-level DP (DP-FedAvg) on the cohort engine: a node clips each of its users' updates and
sends their sum; the server adds one Gaussian draw to the total and divides by q·N. The server
Poisson-samples the users (the same sampler on every engine).

Real ``run_simulation`` federations on ML-100K users (tiny model, few users and rounds).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from fedrec.config import compose
from fedrec.federation.sampling import sample_users
from fedrec.jobs.simulate import initial_item_arrays, prepare_federation, run_simulate
from fedrec.nodes.block import node_block
from fedrec.privacy.user_level import update_norm
from fedrec.protocol.wire import ARRAYS_KEY, METRICS_KEY, USERS_SUMMED

DELTA = 1e-5
SMALL = [
    "dataset=synthetic_ml100k",
    "model.embedding_dim=8",
    "federation.local.epochs=1",
    "federation.local.optimizer=adam",
    "federation.local.lr=0.01",
    "federation.ray_cpus=2",
    "federation.cohort_nodes=2",
    "federation.cohort_chunk=5",
]


class NodeSumAudit:
    """A client mod that saves each cohort node's train reply (arrays and the users summed)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            arrays = {k: v.numpy() for k, v in reply.content[ARRAYS_KEY].items()}
            metrics = reply.content[METRICS_KEY]
            partition = int(context.node_config["partition-id"])
            server_round = int(msg.content["config"]["server-round"])
            np.savez(
                os.path.join(self.folder, f"r{server_round}_p{partition}.npz"),
                users_summed=int(metrics[USERS_SUMMED]),
                users_sampled=len(metrics["users"]),
                **arrays,
            )
        return reply


def _run(run_dir: Path, overrides: list[str], mods=()) -> tuple[dict, dict[str, np.ndarray]]:
    final = run_simulate(compose("simulate", [*SMALL, *overrides]), run_dir, client_mods=mods)
    with np.load(run_dir / "item_table.npz") as table:
        return final, {name: table[name] for name in table.files}


def test_without_noise_the_cohort_release_equals_the_per_user_release(tmp_path):
    # q = 1 (every user, every round) and z = 0: both engines must release exactly the mean over
    # the users of each user's update clipped to C. C = 1.5 is about the median norm of these
    # users' round-1 updates, so the clip binds for about half of them and a node that clipped
    # its mean (or not at all) would give another table. atol 1e-5: the node sums in float32,
    # the per-user server in float64, and round 2's Adam steps carry that rounding.
    common = [
        "privacy=user",
        "privacy.user_clip_norm=1.5",
        "privacy.user_noise_multiplier=0",
        "federation.num_clients=9",  # 4 and 5 users on the two nodes
        "federation.clients_per_round=9",
        "federation.rounds=2",
        "federation.eval_clients_per_round=0",
        "strategy.server_lr=2",
    ]
    per_user, per_user_table = _run(tmp_path / "per_user", [*common, "federation.engine=per_user"])
    cohort, cohort_table = _run(tmp_path / "cohort", [*common, "federation.engine=cohort"])
    for name, array in per_user_table.items():
        np.testing.assert_allclose(cohort_table[name], array, rtol=1e-4, atol=1e-5)
        assert not np.allclose(array, 0)
    assert cohort["user_level_epsilon"] == per_user["user_level_epsilon"] == math.inf


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """Mode ``both`` on 15 users at q = 1/3 (Poisson on the nodes), z = 1, C = 0.5, 3 rounds."""
    run_dir = tmp_path_factory.mktemp("cohort_both")
    audit = run_dir / "replies"
    audit.mkdir()
    overrides = [
        "privacy=both",
        "privacy.noise_multiplier=0.8",
        "privacy.user_clip_norm=0.5",
        "privacy.user_noise_multiplier=1.0",
        "federation.engine=cohort",
        "federation.num_clients=15",
        "federation.clients_per_round=5",
        "federation.rounds=3",
        "federation.eval_clients_per_round=15",
        "federation.eval_every_rounds=3",
        "strategy.server_lr=3",
    ]
    cfg = compose("simulate", [*SMALL, *overrides])
    final, table = _run(run_dir, overrides, mods=[NodeSumAudit(str(audit))])
    replies = {}
    for path in audit.glob("r*_p*.npz"):
        server_round, partition = (int(part[1:]) for part in path.stem.split("_"))
        with np.load(path) as data:
            replies[server_round, partition] = {k: data[k] for k in data.files}
    return cfg, run_dir, final, table, replies


def test_nodes_poisson_sample_and_send_sums_of_clipped_updates(both_run):
    cfg, _, _, _, replies = both_run
    _, _, plan = prepare_federation(cfg)
    counts = []
    for server_round in (1, 2, 3):
        users = sample_users(plan.seed, server_round, 15, 5, poisson=True)
        counts.append(len(users))
        for partition in (0, 1):
            block = node_block(partition, 2, 15)
            expected = sum(block.start <= u < block.stop for u in users)
            reply = replies.get((server_round, partition))
            if reply is None:  # a node none of whose users was drawn is not asked
                assert expected == 0
                continue
            assert reply["users_sampled"] == reply["users_summed"] == expected
            arrays = {k: v for k, v in reply.items() if k.endswith(".weight")}
            # a sum of k clipped updates: up to k·C, and more than one user's C when k > 1
            assert update_norm(arrays) <= expected * 0.5 * (1 + 1e-5)
    assert len(set(counts)) > 1  # Poisson: the number of users varies with the round


def test_the_server_adds_one_gaussian_to_the_total_and_divides_by_q_n(both_run):
    # final = initial + server_lr · Σ_rounds (Σ_nodes node sum + ξ_round) / 5, so the residual
    # is ξ_1 + ξ_2 + ξ_3 with std z·C·√3 per coordinate if and only if the denominator is the
    # fixed q·N = 5 and the sums were added unclipped.
    cfg, _, _, table, replies = both_run
    split, _, _ = prepare_federation(cfg)
    initial = initial_item_arrays(cfg, split.train.num_items)
    for name in initial:
        summed = sum(reply[name].astype(np.float64) for reply in replies.values())
        residual = (table[name].astype(np.float64) - initial[name]) * 5 / 3 - summed
        assert residual.std() == pytest.approx(1.0 * 0.5 * math.sqrt(3), rel=0.05), name
        assert abs(residual.mean()) < 0.05


def test_the_summary_reports_both_guarantees_from_their_accountants(both_run):
    _, run_dir, final, _, _ = both_run
    fresh = RDPAccountant()
    fresh.history = [(1.0, 5 / 15, 3)]
    expected = fresh.get_epsilon(delta=DELTA)
    assert final["user_level_epsilon"] == pytest.approx(expected, rel=1e-9)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["user_level"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert summary["user_level"]["sample_rate"] == pytest.approx(1 / 3)
    assert summary["user_level"]["denominator"] == 5
    assert "user-level" in summary["privacy"]["guarantee"]
    assert final["epsilon_max"] > 0  # record-level, from the users' ledgers on the nodes
    assert summary["epsilon_per_user"]["max"] == final["epsilon_max"]
    assert 0 <= final["ndcg@10"] <= 1


@pytest.mark.parametrize("mode", ["user", "both"])
def test_cohort_accepts_user_level_dp_and_still_refuses_what_cannot_work(mode):
    cohort = ["federation.engine=cohort", f"privacy={mode}", "federation.num_clients=20"]
    cohort.append("federation.clients_per_round=10")
    _, _, plan = prepare_federation(compose("simulate", cohort))
    assert plan.user_level is not None  # the loop then Poisson-samples users, on every engine
    refused = {
        "faults.dropout_rate=0.1": "engine=per_user",
        "federation.weighting=examples": "weighting=examples",
        "defense=median": "engine=per_user",
    }
    for override, reason in refused.items():
        with pytest.raises(ValueError, match=reason):
            prepare_federation(compose("simulate", [*cohort, override]))
