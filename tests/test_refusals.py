"""A device's refusal travels as a reason code, and the server's log says why in an operator's
words (the details stay in the device's own log)."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Context, RecordDict

from fedrec.client import FedrecClient
from fedrec.client.device import train_from_store
from fedrec.federation.record import RoundRecord
from fedrec.federation.rule import ServerRule
from fedrec.federation.server_step import StrategySpec
from fedrec.flower.client_app import describe_node
from fedrec.flower.transport import decode_train_reply
from fedrec.protocol.replies import NodeReply, UserOutcome
from fedrec.protocol.settings import RoundSettings, round_config
from fedrec.protocol.wire import REFUSAL_REASON, RefusalReason

TABLE = {
    "item_embedding.weight": np.zeros((30, 8), np.float32),
    "item_bias.weight": np.zeros((30, 1), np.float32),
}


def _context(node_config: dict) -> Context:
    return Context(0, 1, node_config, RecordDict(), {})


def test_discovery_names_a_missing_or_unusable_store_and_a_misconfigured_node(tmp_path):
    missing = describe_node(_context({"store": str(tmp_path / "nope.sqlite")}), None)
    assert missing["kind"] == "refused" and missing["reason"] == RefusalReason.STORE_MISSING
    assert "fedrec store create" in missing["detail"]
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 10)
    unusable = describe_node(_context({"store": str(junk)}), None)
    assert unusable["reason"] == RefusalReason.STORE_UNUSABLE
    neither = describe_node(_context({}), None)
    assert neither["reason"] == RefusalReason.NODE_MISCONFIGURED
    with FedrecClient.open(tmp_path / "ok.sqlite", num_items=30):
        pass
    assert describe_node(_context({"store": str(tmp_path / "ok.sqlite")}), None) == {
        "kind": "store"
    }


def test_a_catalog_mismatch_reaches_the_server_log_as_its_reason(tmp_path, caplog):
    with FedrecClient.open(tmp_path / "user.sqlite", num_items=40) as client:
        client.record_interaction(1, category="view", timestamp=1.0)
        client.grant_consent(["view"])
    node = {"store": str(tmp_path / "user.sqlite")}
    config = round_config(RoundSettings(server_round=1))
    arrays, metrics = train_from_store(node, {**TABLE}, config | {"model.embedding_dim": 8})
    assert arrays is None and metrics[REFUSAL_REASON] == RefusalReason.CATALOG_MISMATCH
    from flwr.app import MetricRecord

    reply = decode_train_reply(
        5, [0], RecordDict({"metrics": MetricRecord(metrics)}), one_user=True
    )
    record = RoundRecord(1, sampled=1)
    with caplog.at_level(logging.WARNING, logger="fedrec.server"):
        assert ServerRule(StrategySpec(), rounds=1).apply(1, TABLE, [reply], record) is None
    assert record.refused == 1 and record.skipped == 1
    assert RefusalReason.CATALOG_MISMATCH.meaning in caplog.text


def test_refusals_of_a_block_are_counted_per_user_and_described_once(caplog):
    outcomes = [
        UserOutcome(k, "refused", reason=int(RefusalReason.IMPLAUSIBLE_TABLE)) for k in range(3)
    ]
    record = RoundRecord(1, sampled=3)
    with caplog.at_level(logging.WARNING, logger="fedrec.server"):
        ServerRule(StrategySpec(), rounds=1).apply(1, TABLE, [NodeReply(0, outcomes)], record)
    assert record.refused == 3
    lines = [r.message for r in caplog.records if "refused the round" in r.message]
    assert len(lines) == 1 and "3 devices" in lines[0] and "looks crafted" in lines[0]
