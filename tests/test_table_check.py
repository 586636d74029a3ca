"""The device-side check of the item table a server sends: honest tables pass even under heavy
DP noise, crafted ones are refused with a reason, on every device path (the ClientApp's
(a one-user node, a store-backed node, the embedded ``FedrecClient``, a block node's simulated
devices) before anything trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedrec.client import FedrecClient, LocalEvalSpec, LocalTrainingSpec, RoundSettings
from fedrec.client.device import train_from_store
from fedrec.data import DatasetSpec, load_split
from fedrec.flower.records import ContextKeeper, load_states
from fedrec.membership.active import bias_silencing_table
from fedrec.model.mf import MatrixFactorization, ModelSpec
from fedrec.nodes.block import BlockNode, MemoryKeeper
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy.dp_sgd import PrivacySpec
from fedrec.protocol.settings import round_config
from fedrec.protocol.wire import REFUSAL_REASON, ROUND_REFUSED, RefusalReason, RoundRefused
from fedrec.training.table_check import ImplausibleTable, check_item_table

NUM_ITEMS, DIM = 400, 16


def honest_table(seed: int = 0) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    return MatrixFactorization(1, NUM_ITEMS, DIM, init_std=0.1, generator=generator).item_state()


@pytest.mark.parametrize("noise_per_value", [0.0, 1.0, 5.0, 25.0, 50.0])
def test_honest_tables_pass_under_dp_noise(noise_per_value):
    """Noise as user-level DP-FedAvg puts on the table (benchmarks/table_check.py: 3.6 per
    value and round at ε = 1 with 100 clients, item-vector norms up to 84 after 5 rounds);
    the former fixed caps (|bias| ≤ 10, norm ≤ 20) refused such honest tables."""
    rng = np.random.default_rng(1)
    table = honest_table()
    noisy = {
        k: v + rng.normal(0, noise_per_value, v.shape).astype(v.dtype) for k, v in table.items()
    }
    check_item_table(noisy)
    nudged = {
        k: v + rng.normal(0, noise_per_value, v.shape).astype(v.dtype) for k, v in noisy.items()
    }
    check_item_table(nudged, previous=noisy)


def test_an_honest_popularity_skewed_table_passes():
    """Honest training on popularity-skewed data (a synthetic ML-1M-shaped federation after
    three rounds: median bias -2.2, robust sd 0.28, the most popular items at 7-8.6) puts a few
    biases far above the rest; the former symmetric outlier test refused such a table on every
    device and stalled the run. Silencing one item (its bias far below the rest) still fails."""
    rng = np.random.default_rng(0)
    table = honest_table()
    bias = -2.25 + 0.28 * rng.standard_normal(NUM_ITEMS)
    bias[:5] = [7.1, 7.5, 7.9, 8.4, 8.6]
    table["item_bias.weight"] = bias.astype(np.float32).reshape(-1, 1)
    check_item_table(table)
    silenced = {k: v.copy() for k, v in table.items()}
    silenced["item_bias.weight"][9] = -30.0
    with pytest.raises(ImplausibleTable, match="item 9's bias -30 lies 27.* below the median"):
        check_item_table(silenced)


def test_crafted_tables_are_refused_with_the_reason():
    table = honest_table()
    with pytest.raises(ImplausibleTable, match="median item bias is -30"):
        check_item_table(bias_silencing_table(table))
    one_row = {k: v.copy() for k, v in table.items()}
    one_row["item_embedding.weight"][7] *= 1000
    with pytest.raises(ImplausibleTable, match="item 7's vector"):
        check_item_table(one_row)
    one_bias = {k: v.copy() for k, v in table.items()}
    one_bias["item_bias.weight"][3] = 40.0
    with pytest.raises(ImplausibleTable, match="item 3's bias 40 lies .* above the median"):
        check_item_table(one_bias)
    shifted = {k: v.copy() for k, v in table.items()}
    shifted["item_bias.weight"] -= 5.0  # within every absolute limit, but a uniform jump
    check_item_table(shifted)
    with pytest.raises(ImplausibleTable, match="moved by -5"):
        check_item_table(shifted, previous=table)
    assert issubclass(ImplausibleTable, RoundRefused)  # devices answer "refused", not an error


def _settings(embedding_dim: int) -> RoundSettings:
    return RoundSettings(
        model=ModelSpec(embedding_dim=embedding_dim),
        training=LocalTrainingSpec(batch_size=4, lr=0.05),
        privacy=PrivacySpec(mode="record", noise_multiplier=1.0, max_grad_norm=1.0),
        evaluation=LocalEvalSpec(),
        explicit=False,
        seed=0,
        server_round=1,
        weight_by_examples=False,
    )


def test_embedded_client_and_store_node_refuse_a_crafted_table(tmp_path):
    path = tmp_path / "user.sqlite"
    with FedrecClient.open(path, num_items=NUM_ITEMS) as client:
        for item in range(8):
            client.record_interaction(item, category="view", timestamp=1e9 + item)
        client.grant_consent(["view"])
        crafted = bias_silencing_table(honest_table())
        with pytest.raises(ImplausibleTable, match="median item bias"):
            client.train_round(crafted, _settings(DIM))
        assert client.store.ledger() is None and client.store.sent_rounds() == []
    node = {"store": str(path), "holdout-latest": 1}
    config = round_config(_settings(DIM))
    assert train_from_store(node, crafted, config) == (
        None,
        {"num-examples": 0, ROUND_REFUSED: 1, REFUSAL_REASON: RefusalReason.IMPLAUSIBLE_TABLE},
    )
    update, metrics = train_from_store(node, honest_table(), config)
    assert update is not None and metrics["epsilon"] > 0  # the honest table trains


def test_a_one_user_node_refuses_a_crafted_table_and_trains_on_an_honest_one():
    split = load_split(DatasetSpec())  # the synthetic small preset: 200 users × 400 items
    source = SplitUserSource(split, np.arange(4))
    config = round_config(_settings(DIM))
    table = MatrixFactorization(
        1, split.train.num_items, DIM, init_std=0.1, generator=torch.Generator().manual_seed(0)
    ).item_state()
    node = BlockNode(source, MemoryKeeper(), trainer="opacus")
    (reply,) = node.train([0], bias_silencing_table(table), config)
    assert reply.arrays is None and [o.status for o in reply.outcomes] == ["refused"]
    assert reply.outcomes[0].reason == RefusalReason.IMPLAUSIBLE_TABLE
    (reply,) = node.train([0], table, config)
    assert reply.arrays is not None and reply.outcomes[0].epsilon > 0


def test_a_block_node_refuses_a_crafted_table_for_all_its_users():
    split = load_split(DatasetSpec())  # the synthetic small preset: 200 users × 400 items
    source = SplitUserSource(split, np.arange(split.train.num_users))
    config = round_config(_settings(DIM))
    context = Context(0, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})
    node = BlockNode(source, ContextKeeper(context.state))

    (reply,) = node.train([0, 1, 2, 3], bias_silencing_table(honest_table()), config)
    assert reply.arrays is None
    assert [o.status for o in reply.outcomes] == ["refused"] * 4
    assert load_states(context.state) == {}  # nothing spent, nothing kept
    (reply,) = node.train([0, 1, 2, 3], honest_table(), config)
    assert reply.arrays is not None and [o.status for o in reply.outcomes] == ["trained"] * 4
    states = load_states(context.state)
    assert len(states) == 4 and min(s.ledger.epsilon for s in states.values()) > 0


def test_a_round_every_device_refused_says_so_in_the_server_log():
    """The server's round line names the refusals (it said "0 failed, 0 timed out, 0 rejected"
    while every device refused the table, and the reason was only in the devices' logs)."""
    from fedrec.federation.record import RoundRecord
    from fedrec.jobs.simulate import _progress

    quiet = RoundRecord(2, sampled=4, accepted=4)
    assert quiet.outcome_counts() == "0 failed, 0 timed out, 0 rejected"
    stalled = RoundRecord(3, sampled=6040, refused=6040, budget_exhausted=2, skipped=1)
    line = _progress(stalled, rounds=12)
    assert "0/6040 updates (0 failed, 0 timed out, 0 rejected, 6040 refused the request" in line
    assert "2 out of budget" in line and "SKIPPED" in line
