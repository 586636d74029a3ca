"""Injected faults for simulations: devices that drop out, straggle, and a server that dies.

Real federations lose phones mid-round and restart servers. ``configs/faults/`` turns these on
in ``fedrec simulate`` so that the server's handling (per-round timeout, minimum replies, the
counts in ``metrics.csv``) and the fail-closed privacy ledger are exercised by real runs.

Which client misbehaves is a pure function of ``(faults.seed, round, partition-id)``
(:func:`draw_fault`), so a test or a report can tell afterwards exactly who dropped when, and a
rerun injects the same faults. Faults hit training messages only; evaluation is left alone so
that the metrics of a faulty run stay comparable to a clean one.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum

import numpy as np

from fedrec.config.faults import FaultSpec
from fedrec.protocol.wire import CONFIG_KEY

__all__ = ["Fault", "FaultInjector", "FaultSpec", "SecAggFaultInjector", "draw_fault"]

logger = logging.getLogger("fedrec.faults")

_FAULT_STREAM = 0xFA17  # keeps the fault draws apart from every other use of the seed


class Fault(StrEnum):
    DROPOUT_BEFORE_TRAINING = "dropout_before_training"  # nothing trained, nothing charged
    DROPOUT_AFTER_TRAINING = "dropout_after_training"  # trained and charged, reply lost
    STRAGGLER = "straggler"  # trained and charged, replies after the round's timeout


class InjectedDropout(RuntimeError):
    """Raised inside a ClientApp to play a device that vanished mid-round."""


def draw_fault(spec: FaultSpec, server_round: int, partition: int) -> Fault | None:
    """The fault (or None) of client ``partition`` in training round ``server_round``."""
    rng = np.random.default_rng([spec.seed, _FAULT_STREAM, server_round, partition])
    draw, phase = rng.random(2)
    if draw < spec.dropout_rate:
        if phase < spec.dropout_after_training:
            return Fault.DROPOUT_AFTER_TRAINING
        return Fault.DROPOUT_BEFORE_TRAINING
    if draw < spec.dropout_rate + spec.straggler_rate:
        return Fault.STRAGGLER
    return None


class FaultInjector:
    """A Flower client mod (put it first, outermost) that plays the drawn fault of each train
    message. A dropout raises, which Flower turns into an error reply (a failure at the server);
    a straggler sleeps past the round's timeout and then replies into the void."""

    def __init__(self, spec: FaultSpec, round_timeout_s: float) -> None:
        self.spec = spec
        self.delay_s = spec.straggler_delay_s or round_timeout_s + 1.0

    def __call__(self, msg, context, call_next):
        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        return self.play(msg, context, call_next, int(msg.content[CONFIG_KEY]["server-round"]))

    def play(self, msg, context, call_next, server_round: int):
        """Answer ``msg`` through ``call_next``, or fail or straggle as drawn for this round."""
        partition = int(context.node_config["partition-id"])
        fault = draw_fault(self.spec, server_round, partition)
        if fault is Fault.DROPOUT_BEFORE_TRAINING:
            raise InjectedDropout(f"client {partition} dropped out of round {server_round}")
        reply = call_next(msg, context)
        if fault is Fault.DROPOUT_AFTER_TRAINING:
            raise InjectedDropout(
                f"client {partition} dropped out of round {server_round} after training"
            )
        if fault is Fault.STRAGGLER:
            time.sleep(self.delay_s)
        return reply


class SecAggFaultInjector(FaultInjector):
    """The same drawn faults on the SecAgg+ path (put it before ``secaggplus_mod``).

    There a round's training is four messages (setup, share keys, collect masked vectors,
    unmask) and the round config rides only on the third, where the device trains. So the fault
    is played there: a dropout then happens after the keys were shared, which is exactly the case
    SecAgg+ recovers from by reconstructing the dropped device's masks. The round is the
    message's group id (the legacy workflow's round)."""

    def __call__(self, msg, context, call_next):
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Stage

        if msg.metadata.message_type != "train":
            return call_next(msg, context)
        stage_config = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if stage_config is None or stage_config.get("stage") != Stage.COLLECT_MASKED_VECTORS:
            return call_next(msg, context)
        return self.play(msg, context, call_next, int(msg.metadata.group_id))
