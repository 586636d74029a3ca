"""``secure_aggregation=secaggplus``: real small Flower simulations through Flower's SecAgg+.

Two federations of the same 6 users, 1 round, from the same seeded item table, with the same
injected fault (one device drops out after the keys were shared): plain FedAvg and SecAgg+. A
client mod records what each device sends over the wire: its plain item update (plain run) or
its masked vector (SecAgg+). With the same seeds a device computes the same update in both runs,
so the plain run's updates are the reference for what SecAgg+ must hide and for the sum it must
yield. (Two runs, not three, to keep the file near a minute on 2 shared cores.)
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedrec.config import compose
from fedrec.flower.faults import Fault, FaultSpec, draw_fault
from fedrec.jobs.simulate import initial_item_arrays, prepare_federation, run_simulate
from fedrec.protocol.wire import ARRAYS_KEY

USERS = 6
CLIP, LEVELS, SERVER_LR = 0.5, 2**16, 4.0  # coarse levels, so the quantization error is visible
BASE = [
    f"federation.num_clients={USERS}",
    f"federation.clients_per_round={USERS}",
    "federation.rounds=1",
    "federation.eval_clients_per_round=0",
    "federation.local.epochs=1",
    "federation.ray_cpus=2",
    "federation.state_store=false",  # device state in Flower's Context: fewer moving parts
    # No round here waits for it (a dropout answers at once): it only bounds a stage whose
    # devices are slow. Solving σ for a budget took one device past 60 s in stage 2 while the
    # 2 cores ran another job beside the suite; 180 s leaves room for that.
    "federation.timeout_s=180",
    "model.embedding_dim=8",
    f"strategy.server_lr={SERVER_LR}",
    "faults.dropout_rate=0.2",
]
SECAGG = [
    "secure_aggregation=secaggplus",
    f"secure_aggregation.clipping_range={CLIP}",
    f"secure_aggregation.quantization_range={LEVELS}",
]


class WireLog:
    """Client mod (outermost): save what a device's training replies carry, per partition."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        partition = int(context.node_config["partition-id"])
        sent = {f"array:{n}": a.numpy() for n, a in reply.content.get(ARRAYS_KEY, {}).items()}
        stage = reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
        if Key.MASKED_PARAMETERS in stage:
            for index, raw in enumerate(stage[Key.MASKED_PARAMETERS]):
                sent[f"masked:{index}"] = bytes_to_ndarray(raw)
            sent["other_array_bytes"] = np.array(
                sum(len(a.data) for r in reply.content.array_records.values() for a in r.values())
            )
        if sent:
            np.savez(os.path.join(self.directory, f"{partition}.npz"), **sent)
        return reply


def _run(tmp_path_factory, name: str, overrides: list[str]):
    run_dir = tmp_path_factory.mktemp(name)
    wire = run_dir / "wire"
    wire.mkdir()
    cfg = compose("simulate", [*BASE, *overrides])
    run_simulate(cfg, run_dir, client_mods=[WireLog(str(wire))])
    table = dict(np.load(run_dir / "item_table.npz"))
    sent = {int(f.stem): dict(np.load(f)) for f in wire.glob("*.npz")}
    summary = json.loads((run_dir / "summary.json").read_text())
    return cfg, table, sent, summary


def _one_dropout_seed() -> int:
    """A fault seed under which exactly one of the users drops out of round 1."""
    for seed in range(1000):
        faults = [draw_fault(FaultSpec(dropout_rate=0.2, seed=seed), 1, p) for p in range(USERS)]
        if sum(f is not None for f in faults) == 1:
            return seed
    raise AssertionError("no seed found")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    fault_seed = f"faults.seed={_one_dropout_seed()}"
    return {
        "plain": _run(tmp_path_factory, "plain", [fault_seed]),
        "secagg": _run(tmp_path_factory, "secagg", [*SECAGG, fault_seed]),
    }


def _dropped(cfg) -> list[int]:
    return [p for p in range(USERS) if draw_fault(cfg.faults, 1, p) is not None]


def _deltas(plain_sent) -> dict[int, dict[str, np.ndarray]]:
    return {
        p: {k.removeprefix("array:"): v for k, v in sent.items()} for p, sent in plain_sent.items()
    }


def _initial(cfg) -> dict[str, np.ndarray]:
    return initial_item_arrays(cfg, prepare_federation(cfg)[0].train.num_items)


def test_refused_at_config_time():
    def prepare(*overrides):
        return prepare_federation(compose("simulate", [*BASE, *SECAGG, *overrides]))

    with pytest.raises(ValueError, match="engine=per_user"):
        prepare("federation.engine=cohort")
    with pytest.raises(ValueError, match="user-level DP clips each update"):
        prepare("privacy=user")
    with pytest.raises(ValueError, match="weighting=uniform"):
        prepare("federation.weighting=examples")
    with pytest.raises(ValueError, match="strategy=fedavg"):
        prepare("strategy=fedadam")
    with pytest.raises(ValueError, match="max_update_norm"):
        prepare("strategy.max_update_norm=1.0")
    with pytest.raises(ValueError, match="clients_per_round >= 2"):
        prepare("federation.clients_per_round=1")
    with pytest.raises(ValueError, match="overflows modulus_range"):
        prepare("secure_aggregation.quantization_range=1073741824")
    with pytest.raises(ValueError, match="odd whole number"):  # even: Flower's SecAgg+ halts
        compose("simulate", [*SECAGG, "secure_aggregation.num_shares=20"])
    with pytest.raises(ValueError, match="reconstruction_threshold"):  # Flower's own check
        compose(
            "simulate",
            [
                *SECAGG,
                "secure_aggregation.num_shares=5",
                "secure_aggregation.reconstruction_threshold=7",
            ],
        )


def test_server_receives_masked_values_not_the_update(runs):
    _, _, plain_sent, _ = runs["plain"]
    _, _, masked_sent, summary = runs["secagg"]
    deltas = _deltas(plain_sent)
    assert set(masked_sent) >= set(range(USERS)) - set(_dropped(runs["secagg"][0]))
    for partition, sent in masked_sent.items():
        assert not any(k.startswith("array:") for k in sent) and int(sent["other_array_bytes"]) == 0
        # What the update becomes before masking: [weight factor, quantized arrays...] in
        # [0, LEVELS); the masked vector is that plus masks modulo 2**32.
        update = np.concatenate([deltas[partition][n].ravel() for n in sorted(deltas[partition])])
        quantized = (np.clip(update, -CLIP, CLIP) + CLIP) * LEVELS / (2 * CLIP)
        masked = np.concatenate(
            [sent[f"masked:{i}"].ravel() for i in range(1, len(sent) - 1)]
        ).astype(np.float64)
        assert masked.shape == quantized.shape
        assert np.all((quantized >= 0) & (quantized <= LEVELS))
        assert np.mean(masked < LEVELS) < 0.01  # ~LEVELS / 2**32 if uniform
        assert abs(np.corrcoef(masked, quantized)[0, 1]) < 0.1
        assert 0.4 < masked.mean() / 2**32 < 0.6
    assert "only" in summary["secure_aggregation"]["server_saw"]


def test_aggregate_equals_plain_fedavg_within_quantization(runs):
    cfg, plain_table, plain_sent, _ = runs["plain"]
    _, secagg_table, _, summary = runs["secagg"]
    deltas = _deltas(plain_sent)
    assert max(np.abs(v).max() for d in deltas.values() for v in d.values()) < CLIP  # no clipping
    assert summary["secure_aggregation"]["clipped_values"] == 0
    step = 2 * CLIP / LEVELS  # stochastic rounding: each value off by < 1 level; the mean too
    initial = _initial(cfg)
    for name, plain in plain_table.items():
        moved = np.abs(plain - initial[name]).max()
        diff = np.abs(secagg_table[name] - plain).max()
        assert diff <= SERVER_LR * step + 1e-6, name
        assert diff > 0 and moved > 100 * SERVER_LR * step, name  # quantized, and it did move


def test_round_with_a_dropout_below_threshold_completes(runs):
    _, _, plain_sent, _ = runs["plain"]
    cfg, table, _, summary = runs["secagg"]
    dropped = _dropped(cfg)
    assert len(dropped) == 1 and draw_fault(cfg.faults, 1, dropped[0]) in (
        Fault.DROPOUT_BEFORE_TRAINING,
        Fault.DROPOUT_AFTER_TRAINING,
    )
    assert summary["updates"]["accepted"] == USERS - 1
    assert summary["updates"]["failed"] == 1 and summary["faults"]["rounds_skipped"] == 0
    # The dropped device's masks were reconstructed: the result is the survivors' mean.
    deltas = _deltas(plain_sent)
    survivors = [p for p in range(USERS) if p not in dropped]
    initial = _initial(cfg)
    for name, value in table.items():
        mean = np.mean([deltas[p][name] for p in survivors], axis=0)
        expected = initial[name] + SERVER_LR * mean
        assert np.abs(value - expected).max() <= SERVER_LR * 2 * CLIP / LEVELS + 1e-6, name


def test_a_round_in_which_every_device_sits_out_is_skipped(tmp_path):
    # Each device solves σ for one planned round, so in round 2 every device is at its budget
    # and takes part with a zero update of weight 0: the secure sum's total weight is 0.
    overrides = [
        *BASE,
        *SECAGG,
        "dataset=synthetic_ml100k",
        "federation.rounds=2",
        "faults.dropout_rate=0.0",
        "privacy=budget",
        "privacy.target_epsilon=4",
        "privacy.planned_rounds=1",
    ]
    run_simulate(compose("simulate", overrides), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["updates"]["accepted"] == USERS
    assert summary["updates"]["budget_exhausted"] == USERS
    assert summary["epsilon_per_user"]["users_at_budget"] == USERS
    assert summary["faults"]["rounds_skipped"] == 1
    table = dict(np.load(tmp_path / "item_table.npz"))
    assert all(np.isfinite(value).all() for value in table.values())
