"""The one Flower ClientApp: Messages in, :class:`~fedrec.nodes.block.BlockNode` or the device
adapter, Messages out.

A node is one of two kinds, fixed by its node config and told to the server once, in answer to
the server's discovery query (so the server decodes replies by what it knows the node to be):

- ``store="/path/user.sqlite"`` (a deployed device): one user, served by
  :mod:`fedrec.client.device` (consent gate, privacy ledger, sent-log). A missing or unusable
  store is reported at discovery with its reason code, and every request is refused with it.
- ``partition-id``/``num-partitions`` (simulation): a block of the split's users (one user per
  node on the per-user engine, thousands on the cohort engine), their states kept in the node's
  ``Context.state`` or in the run's state store.

Requests carry, beside the item arrays and the round config, a ``node`` record with the users
(positions in the split) the node should serve this round.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.device import STORE_KEY, evaluate_from_store, store_problem, train_from_store
from fedrec.flower.records import ContextKeeper
from fedrec.flower.secagg_client import is_legacy_train, legacy_train_reply
from fedrec.nodes.block import BlockNode, StoreKeeper, node_block
from fedrec.nodes.sources import SplitUserSource
from fedrec.protocol.replies import (
    encode_block_evaluation,
    encode_block_reply,
    encode_user_evaluation,
    encode_user_reply,
)
from fedrec.protocol.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    WORKER_KEY,
    RefusalReason,
)

NODE_KEY = "node"  # the request's users / the discovery answer
logger = logging.getLogger("fedrec.client")
SourceOf = Callable[[Context], SplitUserSource]


def describe_node(context: Context, source_of: SourceOf | None) -> dict[str, Any]:
    """The discovery answer: what this node is and, for a block, which users it holds."""
    node_config = dict(context.node_config)
    if STORE_KEY in node_config:
        problem = store_problem(node_config)
        if problem is None:
            return {"kind": "store"}
        logger.error("%s", problem)
        return {"kind": "refused", "reason": int(problem.reason), "detail": str(problem)}
    if "partition-id" in node_config and source_of is not None:
        block = _block_of(context, source_of(context))
        return {"kind": "block", "first": block.start, "count": len(block)}
    detail = "the node config names neither store=<path> nor a partition-id"
    logger.error("%s", detail)
    return {"kind": "refused", "reason": int(RefusalReason.NODE_MISCONFIGURED), "detail": detail}


def _block_of(context: Context, source: SplitUserSource) -> range:
    """The users (positions in ``source``) a simulation node holds, from its node config."""
    node_config = context.node_config
    return node_block(
        int(node_config["partition-id"]), int(node_config["num-partitions"]), len(source)
    )


def _unpack(msg: Message) -> tuple[dict[str, Any], dict[str, np.ndarray], list[int]]:
    content = msg.content
    config = dict(content[CONFIG_KEY]) if CONFIG_KEY in content.config_records else {}
    arrays = (
        {name: array.numpy() for name, array in content[ARRAYS_KEY].items()}
        if ARRAYS_KEY in content.array_records
        else {}
    )
    node = dict(content[NODE_KEY]) if NODE_KEY in content.config_records else {}
    return config, arrays, [int(u) for u in node.get("users", [])]


def _wire_array(values: np.ndarray) -> np.ndarray:
    """float32 on the wire; integer arrays (ALS item ids) stay exact."""
    values = np.asarray(values)
    return values.astype(np.int64) if values.dtype.kind in "iu" else values.astype(np.float32)


def ray_worker_node() -> str | None:
    """The id of the Ray node this simulated node runs on, or None outside Ray. Ray is looked
    up, not imported: a deployed device's ClientApp never loads it."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())


def _reply(
    msg: Message, arrays: dict[str, np.ndarray] | None, metrics: dict, *, simulated: bool = False
) -> Message:
    records: dict[str, Any] = {METRICS_KEY: MetricRecord(metrics)}
    if arrays is not None:
        records[ARRAYS_KEY] = ArrayRecord({k: Array(_wire_array(v)) for k, v in arrays.items()})
    worker = ray_worker_node() if simulated else None
    if worker is not None:
        records[WORKER_KEY] = ConfigRecord({"ray_node": worker})
    return Message(content=RecordDict(records), reply_to=msg)


def build_client_app(
    source: SplitUserSource | SourceOf | None,
    *,
    mods: Sequence = (),
    state_store: str | None = None,
    trainer: str | Callable[[Context], str] = "closed_form",
    chunk_size: int = 0,
    secure_aggregation: bool = False,
) -> ClientApp:
    """The ClientApp of every fedrec node. ``source``: the split's users (or a function of the
    node's context that returns them; None: store nodes only); ``state_store``: keep simulated
    users' states in this per-run SQLite file instead of ``Context.state``;
    ``secure_aggregation``: add Flower's ``secaggplus_mod`` (innermost) and answer its legacy
    training requests (:mod:`fedrec.flower.secagg_client`)."""
    source_of: SourceOf | None = (
        source
        if source is None or callable(source) and not isinstance(source, SplitUserSource)
        else (lambda context: source)  # type: ignore[assignment,return-value]
    )
    if secure_aggregation:
        from flwr.client.mod import secaggplus_mod

        mods = [*mods, secaggplus_mod]
    app = ClientApp(mods=list(mods))

    def block_node(context: Context, users: list[int] | None) -> tuple[BlockNode, range]:
        """This node's block and its users; ``users`` None: all of them (SecAgg+)."""
        if source_of is None:
            raise ValueError("this ClientApp serves store nodes only (node config store=...)")
        source = source_of(context)
        block = _block_of(context, source)
        outside = [u for u in users or () if u not in block]
        if outside:
            raise ValueError(f"asked for users {outside[:5]} outside this node's block {block}")
        keeper = StoreKeeper(state_store) if state_store else ContextKeeper(context.state)
        chosen = trainer(context) if callable(trainer) else trainer
        return BlockNode(source, keeper, trainer=chosen, chunk_size=chunk_size), block

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        answer = describe_node(context, source_of)
        return Message(content=RecordDict({NODE_KEY: ConfigRecord(answer)}), reply_to=msg)

    def one_user(context: Context):
        """The answer function of a one-user node (SecAgg+), in the one-user reply schema."""
        node_config = dict(context.node_config)
        if STORE_KEY in node_config:
            return lambda config, arrays: train_from_store(node_config, arrays, config)

        def answer(config, arrays):
            node, block = block_node(context, None)
            reply = node.train(list(block), arrays, config)[0]
            return reply.arrays, encode_user_reply(reply.outcomes[0], reply.weight or 1.0)

        return answer

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if secure_aggregation and is_legacy_train(msg):
            return legacy_train_reply(msg, context, one_user(context))
        config, arrays, users = _unpack(msg)
        if STORE_KEY in context.node_config:
            return _reply(msg, *train_from_store(dict(context.node_config), arrays, config))
        node, block = block_node(context, users)
        reply = node.train(users, arrays, config)[0]
        if len(block) == 1:  # the schema a deployed device sends: no user key
            outcome = reply.outcomes[0] if reply.outcomes else None
            if outcome is None:
                return _reply(msg, None, {NUM_EXAMPLES: 0}, simulated=True)
            metrics = encode_user_reply(outcome, reply.weight or 1.0)
            return _reply(msg, reply.arrays, metrics, simulated=True)
        metrics = encode_block_reply(reply.outcomes, reply.weight, summed=reply.summed)
        return _reply(msg, reply.arrays, metrics, simulated=True)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config, arrays, users = _unpack(msg)
        if STORE_KEY in context.node_config:
            return _reply(msg, None, evaluate_from_store(dict(context.node_config), arrays, config))
        node, block = block_node(context, users)
        per_user = node.evaluate(users, arrays, config)
        if len(block) == 1:
            return _reply(msg, None, encode_user_evaluation(per_user[0] if per_user else None))
        return _reply(msg, None, encode_block_evaluation(per_user))

    return app
