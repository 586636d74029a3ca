"""A node that plays a block of devices: the device logic, without Flower.

Every simulated node holds a contiguous block of the split's users (a per-user node is a block of
one) and answers the server's requests for the users it is asked for:

- **train**: the checks every device runs before it trains (the round's settings, the received
  table's names, shapes and values, its plausibility); a refused request is refused by every user
  asked, with the reason code, and costs no privacy. Then each user's local round through the
  configured trainer (:data:`fedrec.training.trainers.TRAINERS`), their states saved *before*
  anything is released (a node that dies afterwards has still recorded the privacy spent), and a
  :class:`~fedrec.protocol.replies.NodeReply`: the weighted mean of the trained users' updates,
  or under user-level DP the sum of their clipped updates.
- **evaluate**: each asked user with held-out items scores the table on the device.

The Flower ClientApp (:mod:`fedrec.flower.client_app`) and the in-process transport
(:mod:`fedrec.federation.in_process`) are both adapters over :class:`BlockNode`, so every engine
runs the same device code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedrec.model.spec import ITEM_EMBEDDING
from fedrec.nodes.state_store import DeviceStateStore, request_digest
from fedrec.protocol.arrays import check_received_arrays
from fedrec.protocol.replies import NodeReply, UserOutcome
from fedrec.protocol.seeds import EVAL_SEED, TRAIN_SEED, user_seed
from fedrec.protocol.settings import parse_round_config
from fedrec.protocol.wire import RoundRefused
from fedrec.training.state import CohortMember, DeviceState, LocalData
from fedrec.training.table_check import check_item_table

logger = logging.getLogger("fedrec.client")


class UserSource(Protocol):
    """Users by position: a split's (:class:`~fedrec.nodes.sources.SplitUserSource`) or
    simulated ones (:class:`~fedrec.nodes.simulated.SimulatedClients`)."""

    def __len__(self) -> int: ...

    def local_data(self, node_config: dict[str, Any]) -> tuple[int, LocalData]: ...


class StateKeeper(Protocol):
    """Where a node keeps its users' states between rounds (never sent anywhere)."""

    def load(
        self, keys: Sequence[int], server_round: int, *, request: str | None
    ) -> dict[int, DeviceState]:
        """The states to start ``server_round`` from (evaluation after round r asks r + 1)."""

    def save(
        self, server_round: int, states: dict[int, DeviceState], *, request: str | None
    ) -> None:
        """Record the states after ``server_round`` (all of them or none)."""


class MemoryKeeper:
    """States in this process's memory: one simulation run, or an in-process federation."""

    def __init__(self, states: dict[int, DeviceState] | None = None) -> None:
        self.states: dict[int, DeviceState] = states if states is not None else {}

    def load(self, keys, server_round, *, request):
        return {int(k): self.states.get(int(k), DeviceState()) for k in keys}

    def save(self, server_round, states, *, request):
        self.states.update(states)


class StoreKeeper:
    """States in a per-run SQLite file (:class:`DeviceStateStore`): they survive the simulation's
    processes, which is what makes a resumed run and a replayed request possible."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self, keys, server_round, *, request):
        with DeviceStateStore(self.path) as store:
            return {int(k): store.load(int(k), server_round, request=request) for k in keys}

    def save(self, server_round, states, *, request):
        if states:
            with DeviceStateStore(self.path) as store:
                store.save_many(server_round, states, request=request)


@dataclass
class BlockNode:
    """The users of one node (positions in ``source``), trained by ``trainer``."""

    source: UserSource
    keeper: StateKeeper
    trainer: str = "closed_form"
    chunk_size: int = 0

    def local_data(self, positions: Sequence[int]) -> list[tuple[int, LocalData]]:
        """(seed key, data) of each asked user; the key is the user's id in the split."""
        return [self.source.local_data({"partition-id": int(p)}) for p in positions]

    def train(
        self,
        positions: Sequence[int],
        arrays: dict[str, np.ndarray],
        config: dict[str, Any],
        *,
        split_replies: bool = False,
    ) -> list[NodeReply]:
        """The node's reply to a training request for these users (one reply; with
        ``split_replies`` one per user, each with that user's own update, for an in-process
        server that needs them one by one)."""
        from fedrec.training.trainers import TRAINERS

        chosen = self.local_data(positions)
        try:
            settings = parse_round_config(config)
            if chosen:  # every user of the round receives the same table: one check for all
                check_received_arrays(
                    arrays,
                    num_items=chosen[0][1].num_items,
                    embedding_dim=settings.model.embedding_dim,
                    explicit=settings.explicit,
                )
                check_item_table(arrays)
            if settings.privacy.user_level and settings.weight_by_examples:
                raise RoundRefused("user-level DP needs equally weighted users")
        except RoundRefused as err:
            logger.warning("refused the server's train request for %d users: %s", len(chosen), err)
            outcomes = [UserOutcome(key, "refused", reason=int(err.reason)) for key, _ in chosen]
            return [NodeReply(None, outcomes, per_user=len(chosen) == 1)]
        request = request_digest(arrays, config) if settings.seed >= 0 else None
        states = self.keeper.load(
            [key for key, _ in chosen], settings.server_round, request=request
        )
        members = [
            CohortMember(
                key,
                data,
                states[key],
                user_seed(settings.seed, key, settings.server_round, TRAIN_SEED),
            )
            for key, data in chosen
        ]
        weights = [
            float(len(m.data.train_items)) if settings.weight_by_examples else 1.0 for m in members
        ]
        if settings.algorithm == "als":
            from fedrec.training.als.trainer import als_round

            result = als_round(
                arrays,
                members,
                spec=settings.als,
                explicit=settings.explicit,
                keep_updates=split_replies,
            )
        else:
            stacked = self.trainer in ("closed_form", "sparse")
            options = {"chunk_size": self.chunk_size} if stacked else {}
            result = TRAINERS.get(self.trainer)(
                arrays,
                members,
                model_spec=settings.model,
                training=settings.training,
                privacy=settings.privacy,
                explicit=settings.explicit,
                server_round=settings.server_round,
                weights=weights,
                keep_updates=split_replies,
                **options,
            )
        changed = {o.key: o.state for o in result.outcomes if o.status in ("trained", "rejected")}
        self.keeper.save(settings.server_round, changed, request=request)  # before release
        outcomes = [
            UserOutcome(
                o.key,
                o.status,
                o.epsilon if o.status != "failed" else None,
                o.loss,
                o.steps,
            )
            for o in result.outcomes
        ]
        # ALS statistics are sums whatever the privacy mode (weight: the users they sum).
        user_level = settings.privacy.user_level or settings.algorithm == "als"
        if split_replies:
            weight_of = dict(zip([m.key for m in members], weights, strict=True))
            return [
                NodeReply(
                    outcome.key,
                    [outcome],
                    result.updates.get(outcome.key) if outcome.status == "trained" else None,
                    1.0 if user_level else weight_of[outcome.key],
                    summed=user_level,
                    per_user=True,
                )
                for outcome in outcomes
            ]
        trained = sum(o.status == "trained" for o in outcomes)
        released, weight = None, 0.0
        if trained and user_level:
            released, weight = result.update_sum, float(trained)
        elif trained:
            weight = result.weight_sum
            released = {k: v / weight for k, v in result.update_sum.items()}
        return [
            NodeReply(
                None, outcomes, released, weight, summed=user_level, per_user=len(chosen) == 1
            )
        ]

    def evaluate(
        self, positions: Sequence[int], arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> list[dict[str, float]]:
        """Each asked user's metrics (users without held-out items are left out)."""
        from fedrec.training.evaluate import evaluate_user

        try:
            settings = parse_round_config(config)
            chosen = [(k, d) for k, d in self.local_data(positions) if len(d.test_items)]
            if chosen:
                check_received_arrays(
                    arrays,
                    num_items=chosen[0][1].num_items,
                    embedding_dim=settings.model.embedding_dim,
                    explicit=settings.explicit,
                )
        except RoundRefused as err:
            logger.warning("refused the server's evaluate request: %s", err)
            return []
        states = self.keeper.load([k for k, _ in chosen], settings.server_round + 1, request=None)
        if settings.algorithm == "als":  # the exact factor against this very table
            states = _als_states(arrays, chosen, settings)
        return [
            evaluate_user(
                arrays,
                data,
                states[key],
                model_spec=settings.model,
                eval_spec=settings.evaluation,
                explicit=settings.explicit,
                num_negatives=settings.training.num_negatives,
                seed=user_seed(settings.seed, key, settings.server_round, EVAL_SEED),
            )
            for key, data in chosen
        ]


def _als_states(
    arrays: dict[str, np.ndarray], chosen: list[tuple[int, LocalData]], settings
) -> dict[int, DeviceState]:
    """Throw-away states holding each user's ALS factor solved against ``arrays`` (what a device
    scores and recommends with; nothing of it is sent)."""
    from fedrec.training.als.solve import solve_users
    from fedrec.training.als.trainer import user_state_arrays

    factors = solve_users(
        arrays[ITEM_EMBEDDING],
        [data.train_items for _, data in chosen],
        reg=settings.als.reg,
        unobserved_weight=settings.als.unobserved_weight,
        reg_exponent=settings.als.reg_exponent,
    )
    return {
        key: DeviceState(user_arrays=user_state_arrays(factor))
        for (key, _), factor in zip(chosen, factors, strict=True)
    }


def node_block(partition: int, partitions: int, num_users: int) -> range:
    """Node ``partition`` of ``partitions`` holds users [p·N/P, (p+1)·N/P)."""
    if not 0 <= partition < partitions:
        raise ValueError(f"partition-id {partition} outside [0, {partitions})")
    return range(partition * num_users // partitions, (partition + 1) * num_users // partitions)
