"""The one local-training interface, and the implementations a config can name.

A device's round (one user, the received item side in, the item update out, the ledger charged
before release) has two implementations that compute the same numbers:

- ``opacus``: :func:`fedrec.training.opacus_round.train_round`, a one-user model on a real Opacus
  engine, user by user (the reference);
- ``closed_form``: :func:`fedrec.training.closed_form.engine.train_cohort`, the same round for a
  whole block of users with MF's per-example gradients in closed form (no Opacus engine, hooks
  or per-sample buffers), stacked for speed;
- ``sparse``: :func:`fedrec.training.closed_form.sparse.train_cohort_sparse`, the closed form on
  only the item rows each user touches (memory per user ∝ their rows, not the catalogue); the
  same numbers without DP, the same distribution with DP-SGD and SGD (lazy noise).

Every caller goes through :class:`LocalTrainer`: a simulation node with one user or a block of
them, the in-process federations (audit, poisoning, tuning), and the embedded
:class:`fedrec.client.FedrecClient` (:func:`train_one`). A single user is a block of one.
``tests/test_trainer_contract.py`` runs the same contract tests against every registered trainer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedrec.model.spec import ModelSpec
from fedrec.privacy.ledger import PrivacyBudgetExhausted
from fedrec.privacy.spec import PrivacySpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.registry import Registry
from fedrec.training.state import (
    CohortMember,
    CohortRound,
    DeviceState,
    LocalData,
    MemberOutcome,
    RoundResult,
)

logger = logging.getLogger("fedrec.training")


class LocalTrainer(Protocol):
    """Every member's local round against the same received item arrays.

    ``weights`` (default 1 each) scale each released update in the round's ``update_sum``. A user
    whose budget would be exceeded trains nothing (``budget_exhausted``); one whose data cannot
    train (no interactions, no ratings in explicit mode) is ``failed``; one whose update is not
    finite is ``rejected`` (charged, since the noisy computation ran, but left out of the sum).
    With user-level DP each user's update is clipped to ``privacy.user_clip_norm`` before it
    enters the sum. ``keep_updates``: also return each trained user's own update (tests, the
    in-process federations; at scale only the sum fits in memory).
    """

    def __call__(
        self,
        item_arrays: dict[str, np.ndarray],
        members: Sequence[CohortMember],
        *,
        model_spec: ModelSpec,
        training: LocalTrainingSpec,
        privacy: PrivacySpec,
        explicit: bool,
        server_round: int = 0,
        weights: Sequence[float] | None = None,
        keep_updates: bool = False,
    ) -> CohortRound: ...


TRAINERS: Registry[LocalTrainer] = Registry("local trainer")


@TRAINERS.register("opacus")
def opacus_trainer(
    item_arrays: dict[str, np.ndarray],
    members: Sequence[CohortMember],
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    server_round: int = 0,
    weights: Sequence[float] | None = None,
    keep_updates: bool = False,
) -> CohortRound:
    """Each member's round on its own Opacus engine (:func:`train_round`)."""
    from fedrec.training.opacus_round import train_round

    weights = _weights(weights, members)
    total = {name: np.zeros(np.shape(a), dtype=np.float32) for name, a in item_arrays.items()}
    weight_sum, outcomes, updates = 0.0, [], {}
    for member, weight in zip(members, weights, strict=True):
        try:
            result = train_round(
                item_arrays,
                member.data,
                member.state,
                model_spec=model_spec,
                training=training,
                privacy=privacy,
                explicit=explicit,
                seed=member.seed,
                server_round=server_round,
            )
        except PrivacyBudgetExhausted as err:
            spent = member.state.ledger.epsilon if member.state.ledger else 0.0
            outcomes.append(
                MemberOutcome(
                    member.key, "budget_exhausted", member.state, epsilon=spent, reason=str(err)
                )
            )
            continue
        except ValueError as err:
            outcomes.append(MemberOutcome(member.key, "failed", member.state, reason=str(err)))
            continue
        update = result.item_update
        if keep_updates:
            updates[member.key] = update
        finite = all(np.isfinite(array).all() for array in update.values())
        status = "trained" if finite else "rejected"
        outcomes.append(
            MemberOutcome(
                member.key,
                status,
                result.state,
                result.loss,
                result.steps,
                result.epsilon,
                "" if finite else "the update holds NaN or inf",
            )
        )
        if finite:
            for name, array in update.items():
                total[name] += weight * array
            weight_sum += weight
    return CohortRound(total, weight_sum, outcomes, updates)


@TRAINERS.register("closed_form")
def closed_form_trainer(
    item_arrays: dict[str, np.ndarray],
    members: Sequence[CohortMember],
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    server_round: int = 0,
    weights: Sequence[float] | None = None,
    keep_updates: bool = False,
    chunk_size: int = 0,
) -> CohortRound:
    """The block's rounds stacked (:func:`train_cohort`). An optimizer the closed form does not
    implement (``adagrad``) runs on the Opacus trainer instead, with a warning: same numbers,
    one engine per user."""
    from fedrec.training.closed_form.engine import FAST_OPTIMIZERS, train_cohort

    if training.optimizer not in FAST_OPTIMIZERS:
        logger.warning(
            "the closed-form trainer runs %s, not '%s': %d users train on Opacus instead",
            ", ".join(FAST_OPTIMIZERS),
            training.optimizer,
            len(members),
        )
        return opacus_trainer(
            item_arrays,
            members,
            model_spec=model_spec,
            training=training,
            privacy=privacy,
            explicit=explicit,
            server_round=server_round,
            weights=weights,
            keep_updates=keep_updates,
        )
    return train_cohort(
        item_arrays,
        list(members),
        model_spec=model_spec,
        training=training,
        privacy=privacy,
        explicit=explicit,
        server_round=server_round,
        weights=_weights(weights, members),
        chunk_size=chunk_size,
        keep_updates=keep_updates,
    )


@TRAINERS.register("sparse")
def sparse_trainer(
    item_arrays: dict[str, np.ndarray],
    members: Sequence[CohortMember],
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    server_round: int = 0,
    weights: Sequence[float] | None = None,
    keep_updates: bool = False,
    chunk_size: int = 0,
) -> CohortRound:
    """The block's rounds stacked on the rows each user touches
    (:func:`~fedrec.training.closed_form.sparse.train_cohort_sparse`): the closed form's numbers
    without DP, its distribution with DP-SGD and SGD (lazy noise). DP-SGD with Adam, which has
    no lazy form, and ``adagrad`` run on the closed-form trainer (which hands ``adagrad`` on to
    Opacus)."""
    from fedrec.training.closed_form.engine import FAST_OPTIMIZERS
    from fedrec.training.closed_form.sparse import train_cohort_sparse

    options = dict(
        model_spec=model_spec,
        training=training,
        privacy=privacy,
        explicit=explicit,
        server_round=server_round,
        weights=weights,
        keep_updates=keep_updates,
        chunk_size=chunk_size,
    )
    if training.optimizer not in FAST_OPTIMIZERS or (
        privacy.record_level and training.optimizer != "sgd"
    ):
        return closed_form_trainer(item_arrays, members, **options)
    return train_cohort_sparse(item_arrays, list(members), **options)


def _weights(weights: Sequence[float] | None, members: Sequence[CohortMember]) -> list[float]:
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} members")
    return weights


def train_one(
    trainer: str,
    item_arrays: dict[str, np.ndarray],
    data: LocalData,
    state: DeviceState,
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    seed: int | None,
    server_round: int = 0,
) -> RoundResult:
    """One user's round through a registered trainer, as a device runs it: the update (also
    when it is not finite: the server refuses it, as it would any), the new state, and
    :class:`PrivacyBudgetExhausted` / ``ValueError`` raised instead of an outcome status."""
    if len(data.train_items) == 0:
        raise ValueError("this user has no training interactions")
    result = TRAINERS.get(trainer)(
        item_arrays,
        [CohortMember(0, data, state, seed)],
        model_spec=model_spec,
        training=training,
        privacy=privacy,
        explicit=explicit,
        server_round=server_round,
        keep_updates=True,
    )
    outcome = result.outcomes[0]
    if outcome.status == "budget_exhausted":
        raise PrivacyBudgetExhausted(outcome.reason)
    if outcome.status == "failed":
        raise ValueError(outcome.reason)
    batch_size = min(training.batch_size, len(data.train_items))
    sample_rate = (
        1 / math.ceil(len(data.train_items) / batch_size)
        if privacy.record_level
        else batch_size / len(data.train_items)
    )
    return RoundResult(
        result.updates[0],
        outcome.state,
        outcome.loss,
        outcome.steps,
        sample_rate,
        outcome.epsilon,
    )
