"""What the federated ALS test modules share: the small Flower federation's overrides, the reply
audit, real users as cohort members, a node's reply, metrics.csv's training rows, and an
in-process (DP-)ALS federation."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fedrec.config.algorithm import AlgorithmSpec
from fedrec.federation.record import RoundRecord
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy import PrivacySpec
from fedrec.privacy.als import AlsPrivacyPlan
from fedrec.protocol.replies import NodeReply, UserOutcome
from fedrec.protocol.wire import ARRAYS_KEY
from fedrec.training.state import CohortMember, DeviceState

# federated ALS on 12 users of the small synthetic log, every user in both rounds, no
# evaluation rounds: each module adds its model size and algorithm settings
TWELVE_USER_ALS = [
    "algorithm=als",
    "federation.num_clients=12",
    "federation.clients_per_round=12",
    "federation.rounds=2",
    "federation.eval_clients_per_round=0",
    "federation.ray_cpus=2",
]


class ReplyAudit:
    """A client mod that saves every train reply's arrays (what the server receives)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            arrays = {k: v.numpy() for k, v in reply.content[ARRAYS_KEY].items()}
            name = f"r{msg.content['config']['server-round']}_n{context.node_id}.npz"
            np.savez(os.path.join(self.folder, name), **arrays)
        return reply


def training_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's rows of the training rounds (round 0 is the untrained baseline)."""
    with open(run_dir / "metrics.csv") as handle:
        return [r for r in csv.DictReader(handle) if int(float(r["server_round"])) > 0]


def split_members(split, count: int, seed: int = 0) -> list[CohortMember]:
    """The split's first ``count`` users as a block's members (user u gets seed ``seed + u``)."""
    source = SplitUserSource(split, np.arange(split.train.num_users))
    return [
        CohortMember(
            key=user,
            data=source.local_data({"partition-id": user})[1],
            state=DeviceState(),
            seed=seed + user,
        )
        for user in range(count)
    ]


def trained_reply(key: int, arrays: dict[str, np.ndarray]) -> NodeReply:
    """A one-user node's reply carrying ``arrays``."""
    return NodeReply(
        node=key, outcomes=[UserOutcome(key, "trained")], arrays=arrays, weight=1.0, summed=True
    )


def run_in_process(
    split, algorithm: AlgorithmSpec, privacy: PrivacySpec, rounds: int, users: np.ndarray
) -> tuple[list[RoundRecord], AlsPrivacyPlan | None]:
    """(DP-)ALS in process over ``users`` (all of them every round, dim 8): each training
    round's record and the run's DP-ALS plan."""
    from fedrec.federation.in_process import InProcessTransport
    from fedrec.federation.loop import FederationPlan, run_rounds
    from fedrec.federation.server_step import StrategySpec
    from fedrec.jobs.simulate import als_server_plan
    from fedrec.model.mf import random_item_arrays
    from fedrec.model.spec import ModelSpec
    from fedrec.protocol.settings import LocalEvalSpec, RoundSettings

    server = als_server_plan(algorithm, privacy, rounds=rounds, devices_per_round=len(users))
    plan = FederationPlan(
        settings=RoundSettings(
            model=ModelSpec(8, 0.1),
            privacy=privacy,
            evaluation=LocalEvalSpec(full_metrics=["ndcg@10"], sampled_metrics=[]),
            als=algorithm.als_spec(),
            algorithm="als",
            seed=0,
        ),
        strategy=StrategySpec(),
        rounds=rounds,
        clients_per_round=len(users),
        eval_clients_per_round=0,
        seed=0,
        als=server,
    )
    records: list[RoundRecord] = []
    initial = random_item_arrays(split.train.num_items, 8, init_std=0.1, seed=0)
    run_rounds(
        InProcessTransport(SplitUserSource(split, users), split_replies=False),
        plan,
        initial,
        on_round=lambda r: r.server_round and records.append(r),
    )
    return records, server.privacy
