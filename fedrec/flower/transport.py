"""The Flower transport of the round loop: users to nodes, requests to Messages, replies back.

At start-up the server asks every connected node what it is (the discovery query,
:func:`fedrec.flower.client_app.describe_node`): a block of the simulated split's users, or one
deployed user's store. The population is then the blocks' users in split order, followed by
the store nodes in node-id order; the round loop samples users, and this transport sends each
node one request for the users it holds, decodes each reply by the node's kind
(:mod:`fedrec.protocol.replies`), and turns a missing reply into a timed-out one and an error
reply into a failed one, for every user asked of that node.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.flower.client_app import NODE_KEY
from fedrec.protocol.replies import (
    NodeReply,
    UserOutcome,
    decode_block_evaluation,
    decode_block_reply,
    decode_user_evaluation,
    decode_user_reply,
)
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, WORKER_KEY, RefusalReason

logger = logging.getLogger("fedrec.server")
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Seat:
    """Where population user ``index`` lives: a node, and its position there (blocks)."""

    node: int
    kind: str  # "block" or "store"
    position: int
    block_size: int = 1  # users on the node; a node of one answers in the one-user schema

    @property
    def one_user(self) -> bool:
        return self.kind == "store" or self.block_size == 1


class FlowerTransport:
    """:class:`~fedrec.federation.loop.Transport` over a Flower Grid."""

    def __init__(
        self,
        grid: Grid,
        *,
        nodes: int,
        timeout_s: float,
        connect_timeout_s: float = 600.0,
        workers: Counter[str] | None = None,
    ) -> None:
        """``workers``, if given, counts the training replies per Ray node that computed them
        (simulation only: where a run on a Ray cluster did its work)."""
        self.grid, self.timeout_s = grid, timeout_s
        self.workers = workers
        self.seats = self._discover(nodes, connect_timeout_s)
        self.population = len(self.seats)

    # -- start-up ------------------------------------------------------------------------------
    def _discover(self, nodes: int, connect_timeout_s: float) -> list[Seat]:
        deadline = time.monotonic() + connect_timeout_s
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = sorted(self.grid.get_node_ids())
        if len(node_ids) < nodes:
            raise RuntimeError(
                f"{len(node_ids)} of the {nodes} nodes the federation needs connected within "
                f"{connect_timeout_s:.0f} s"
            )
        messages = [
            Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
            for node in node_ids
        ]
        answers = {
            reply.metadata.src_node_id: reply
            # Not the round's timeout: a node's first message starts its process and imports
            # torch, which on a loaded machine can take longer than a short round timeout allows.
            for reply in self.grid.send_and_receive(
                messages, timeout=max(self.timeout_s, max(0.0, deadline - time.monotonic()), 60.0)
            )
        }
        blocks, stores = [], []
        for node in node_ids:
            reply = answers.get(node)
            if reply is None or reply.has_error():
                why = "no answer" if reply is None else reply.error.reason
                logger.warning(
                    "node %d left out of the federation: discovery failed (%s)", node, why
                )
                continue
            answer = dict(reply.content[NODE_KEY])
            if answer.get("kind") == "block":
                blocks.append((int(answer["first"]), int(answer["count"]), node))
            elif answer.get("kind") == "store":
                stores.append(node)
            else:
                logger.error(
                    "node %d left out of the federation: %s (%s)",
                    node,
                    RefusalReason.describe(answer.get("reason")),
                    answer.get("detail", ""),
                )
        seats: list[Seat] = []
        for first, count, node in sorted(blocks):
            if first != len(seats):
                raise RuntimeError(
                    f"the simulation's nodes do not hold consecutive blocks of users (node {node} "
                    f"starts at {first}, expected {len(seats)})"
                )
            seats += [Seat(node, "block", first + i, count) for i in range(count)]
        seats += [Seat(node, "store", 0) for node in stores]
        if not seats:
            raise RuntimeError("no node can take part: see the errors above")
        logger.info(
            "discovery: %d of %d nodes take part, holding %d users (%d simulated blocks, %d "
            "stores)",
            len(blocks) + len(stores),
            len(node_ids),
            len(seats),
            len(blocks),
            len(stores),
        )
        return seats

    # -- a round -------------------------------------------------------------------------------
    def _send(self, kind: str, users: np.ndarray, arrays: Arrays, config: dict):
        by_node: dict[int, list[int]] = defaultdict(list)
        for user in users.tolist():
            by_node[self.seats[user].node].append(user)
        messages = []
        for node, asked in by_node.items():
            content = RecordDict(
                {
                    ARRAYS_KEY: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                    CONFIG_KEY: ConfigRecord(dict(config)),
                    NODE_KEY: ConfigRecord({"users": [self.seats[u].position for u in asked]}),
                }
            )
            messages.append(Message(content, dst_node_id=node, message_type=kind))
        replies = {
            reply.metadata.src_node_id: reply
            for reply in self.grid.send_and_receive(messages, timeout=self.timeout_s)
        }
        return by_node, replies

    def train(self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict):
        by_node, replies = self._send(MessageType.TRAIN, users, arrays, config)
        decoded = []
        for node, asked in by_node.items():
            reply = replies.get(node)
            asked_keys = [self._key(u) for u in asked]
            if reply is None or reply.has_error():
                failed = [UserOutcome(key, "failed") for key in asked_keys]
                error = "" if reply is None else str(reply.error.reason)
                decoded.append(NodeReply(node, failed, error=error, timed_out=reply is None))
                continue
            one_user = self.seats[asked[0]].one_user
            decoded.append(decode_train_reply(node, asked_keys, reply.content, one_user=one_user))
            if self.workers is not None and WORKER_KEY in reply.content.config_records:
                self.workers[str(reply.content[WORKER_KEY].get("ray_node", "?"))] += 1
        if len(replies) < len(by_node):
            logger.warning(
                "round %d: %d of %d nodes did not reply within %.0f s",
                server_round,
                len(by_node) - len(replies),
                len(by_node),
                self.timeout_s,
            )
        return decoded

    def evaluate(self, server_round: int, users: np.ndarray, arrays: Arrays, config: dict):
        by_node, replies = self._send(MessageType.EVALUATE, users, arrays, config)
        per_user: list[dict[str, float]] = []
        for node, asked in by_node.items():
            reply = replies.get(node)
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                logger.warning(
                    "round %d: evaluation failed on node %d: %s", server_round, node, why
                )
                continue
            if METRICS_KEY not in reply.content.metric_records:
                logger.warning("round %d: node %d's evaluation has no metrics", server_round, node)
                continue
            metrics = dict(reply.content[METRICS_KEY])
            if self.seats[asked[0]].one_user:
                per_user += decode_user_evaluation(metrics)
            else:
                per_user += decode_block_evaluation(metrics)
        return per_user

    def _key(self, user: int) -> int:
        """The user's key in the server's records: the split position (a block's users) or the
        population index (a store)."""
        seat = self.seats[user]
        return seat.position if seat.kind == "block" else user


def decode_train_reply(
    node: int, asked_keys: list, content: RecordDict, *, one_user: bool
) -> NodeReply:
    """A node's training reply as the server rule reads it. A reply that is not what a fedrec
    node sends (other records, several array records, unreadable metrics) counts as rejected
    for every user asked; its arrays are then checked by the rule like any other."""
    unexpected = set(content.keys()) - {ARRAYS_KEY, METRICS_KEY, WORKER_KEY}
    if unexpected or len(content.array_records) > 1:
        reason = f"a reply with unexpected records {sorted(unexpected or content.array_records)}"
        return NodeReply(node, [UserOutcome(key, "rejected") for key in asked_keys], error=reason)
    released = (
        {k: v.numpy() for k, v in content[ARRAYS_KEY].items()}
        if ARRAYS_KEY in content.array_records
        else None
    )
    metrics = dict(content[METRICS_KEY]) if METRICS_KEY in content.metric_records else {}
    try:
        if one_user:
            return decode_user_reply(node, asked_keys[0], released, metrics)
        return decode_block_reply(node, released, metrics)
    except (KeyError, TypeError, ValueError) as err:
        failed = [UserOutcome(key, "rejected") for key in asked_keys]
        return NodeReply(node, failed, error=f"an unreadable reply ({err})")
