"""What a node answers, typed: which users took part and how, and what it released.

A node speaks for one user (a deployed device, a simulated device) or for a block of users (a
simulation node that plays many devices). Either way the server reads the same
:class:`NodeReply`: one :class:`UserOutcome` per user it asked for, and the released arrays
(the mean of the trained users' updates with their total weight, or, under user-level DP, the sum
of their clipped updates). The Flower adapters carry it in a MetricRecord, in one of two
encodings the server chooses by what it knows the node to be (never by sniffing keys):

- **one user** (:func:`encode_user_reply` / :func:`decode_user_reply`): the flat metrics an app
  team sees in the README's schema (``num-examples``, ``train_loss``, ``epsilon``,
  ``local_steps``, or one of the flags that say why nothing was sent). No user key travels.
- **a block of users** (:func:`encode_block_reply` / :func:`decode_block_reply`): per-user lists
  (keys, statuses, ε, losses, refusal codes). Only simulation nodes send it: their user keys are
  indices of the simulated split, which the server already knows.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedrec.protocol.wire import (
    BUDGET_EXHAUSTED,
    CONSENT_MISSING,
    DECLINED,
    NUM_EXAMPLES,
    REFUSAL_REASON,
    ROUND_REFUSED,
    USERS_SUMMED,
)

STATUSES = ("trained", "declined", "refused", "budget_exhausted", "failed", "rejected")


@dataclass
class UserOutcome:
    """What became of one user asked to train. ``epsilon``: the record-level ε their ledger holds
    after the round (None: no DP-SGD report); ``reason``: a RefusalReason code when refused, or
    the decline flag's name when declined."""

    key: Hashable
    status: str
    epsilon: float | None = None
    loss: float = float("nan")
    steps: int = 0
    reason: int | str = 0

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status '{self.status}'; accepted: {', '.join(STATUSES)}")


@dataclass
class NodeReply:
    """One node's answer to a training request.

    ``arrays``: None when no user's update was released. Otherwise the weighted mean of the
    trained users' updates, ``weight`` being their total weight; or, with ``summed``, the sum of
    their per-user clipped updates (user-level DP), ``weight`` being how many were summed.
    ``per_user``: the arrays are one user's own update (what a robust rule needs). ``error``: the
    node as a whole failed (its users count as failed); ``timed_out``: its reply never came.
    """

    node: Hashable
    outcomes: list[UserOutcome] = field(default_factory=list)
    arrays: dict[str, np.ndarray] | None = None
    weight: float = 0.0
    summed: bool = False
    per_user: bool = True
    error: str = ""
    timed_out: bool = False

    @property
    def trained(self) -> list[UserOutcome]:
        return [o for o in self.outcomes if o.status == "trained"]


# -- one user ----------------------------------------------------------------------------------


def encode_user_reply(outcome: UserOutcome, weight: float = 1.0) -> dict[str, Any]:
    """The flat metrics of one user's training reply (the schema app teams see)."""
    if outcome.status == "trained":
        metrics: dict[str, Any] = {
            NUM_EXAMPLES: weight,
            "train_loss": float(outcome.loss),
            "epsilon": float(outcome.epsilon or 0.0),
            "local_steps": int(outcome.steps),
        }
        return metrics
    metrics = {NUM_EXAMPLES: 0}
    if outcome.status == "declined":
        metrics[str(outcome.reason) if outcome.reason in DECLINED else CONSENT_MISSING] = 1
    elif outcome.status == "refused":
        metrics[ROUND_REFUSED] = 1
        metrics[REFUSAL_REASON] = int(outcome.reason or 0)
    elif outcome.status == "budget_exhausted":
        metrics[BUDGET_EXHAUSTED] = 1
        metrics["epsilon"] = float(outcome.epsilon or 0.0)
    else:  # failed / rejected on the device: nothing released, and nothing more to say
        metrics[ROUND_REFUSED] = 1
    return metrics


def decode_user_reply(
    node: Hashable, key: Hashable, arrays: dict[str, np.ndarray] | None, metrics: Mapping
) -> NodeReply:
    """A one-user node's reply as the server reads it. A reply with arrays is a trained user's
    update (the server still checks it); one without says why through its flags."""
    epsilon = metrics.get("epsilon")
    epsilon = None if epsilon is None else float(epsilon)
    if arrays is not None:
        weight = metrics.get(NUM_EXAMPLES, 1)
        outcome = UserOutcome(
            key,
            "trained",
            epsilon,
            float(metrics.get("train_loss", math.nan)),
            int(metrics.get("local_steps", 0)),
        )
        return NodeReply(node, [outcome], dict(arrays), _weight(weight))
    declined = [flag for flag in DECLINED if metrics.get(flag)]
    if declined:
        outcome = UserOutcome(key, "declined", reason=declined[0])
    elif metrics.get(BUDGET_EXHAUSTED):
        outcome = UserOutcome(key, "budget_exhausted", epsilon)
    elif metrics.get(ROUND_REFUSED):
        outcome = UserOutcome(key, "refused", reason=int(metrics.get(REFUSAL_REASON, 0) or 0))
    else:
        outcome = UserOutcome(key, "rejected", reason="a reply with neither arrays nor a flag")
    return NodeReply(node, [outcome])


def _weight(value: object) -> float:
    try:
        weight = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1.0  # the server's check refuses it
    return weight if math.isfinite(weight) else -1.0


# -- a block of users --------------------------------------------------------------------------


def encode_block_reply(
    outcomes: Sequence[UserOutcome], weight: float, *, summed: bool
) -> dict[str, Any]:
    """The metrics of a node that speaks for many users: one list entry per user."""
    metrics: dict[str, Any] = {
        NUM_EXAMPLES: float(weight),
        "users": [int(o.key) for o in outcomes],  # type: ignore[call-overload]
        "status": [STATUSES.index(o.status) for o in outcomes],
        "epsilon": [math.nan if o.epsilon is None else float(o.epsilon) for o in outcomes],
        "loss": [float(o.loss) for o in outcomes],
        "steps": [int(o.steps) for o in outcomes],
        "reason": [int(o.reason) if isinstance(o.reason, int) else 0 for o in outcomes],
    }
    if summed:
        metrics[USERS_SUMMED] = sum(o.status == "trained" for o in outcomes)
    return metrics


def decode_block_reply(
    node: Hashable, arrays: dict[str, np.ndarray] | None, metrics: Mapping
) -> NodeReply:
    columns = [list(metrics.get(k, [])) for k in ("users", "status", "epsilon", "loss", "steps")]
    reasons = list(metrics.get("reason", [0] * len(columns[0])))
    if len({len(c) for c in [*columns, reasons]}) != 1:
        raise ValueError("a block reply's per-user lists differ in length")
    outcomes = [
        UserOutcome(
            int(user),
            STATUSES[int(status)],
            None if math.isnan(float(eps)) else float(eps),
            float(loss),
            int(steps),
            int(reason),
        )
        for user, status, eps, loss, steps, reason in zip(*columns, reasons, strict=True)
    ]
    summed = USERS_SUMMED in metrics
    weight = float(metrics[USERS_SUMMED]) if summed else _weight(metrics.get(NUM_EXAMPLES, 0))
    return NodeReply(node, outcomes, arrays, weight, summed=summed, per_user=False)


# -- evaluation --------------------------------------------------------------------------------


def encode_user_evaluation(metrics: Mapping[str, float] | None) -> dict[str, Any]:
    """One user's evaluation reply: ``evaluated`` 0 (nothing to score) or 1 with the metrics."""
    if not metrics:
        return {NUM_EXAMPLES: 1, "evaluated": 0}
    return {NUM_EXAMPLES: 1, "evaluated": 1, **{k: float(v) for k, v in metrics.items()}}


def decode_user_evaluation(metrics: Mapping) -> list[dict[str, float]]:
    values = dict(metrics)
    if not values.pop("evaluated", 0):
        return []
    values.pop(NUM_EXAMPLES, None)
    return [{k: float(v) for k, v in values.items()}]


def encode_block_evaluation(per_user: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """A block's evaluation reply: one list per metric (NaN where a user could not compute it)."""
    names = sorted({name for row in per_user for name in row})
    metrics: dict[str, Any] = {
        NUM_EXAMPLES: max(len(per_user), 1),
        "users_evaluated": len(per_user),
    }
    for name in names:
        metrics[f"user.{name}"] = [float(row.get(name, math.nan)) for row in per_user]
    return metrics


def decode_block_evaluation(metrics: Mapping) -> list[dict[str, float]]:
    lists = {k[len("user.") :]: v for k, v in metrics.items() if k.startswith("user.")}
    rows = []
    for row in range(int(metrics.get("users_evaluated", 0))):
        values = {name: float(v[row]) for name, v in lists.items()}
        rows.append({k: v for k, v in values.items() if not math.isnan(v)})
    return rows
