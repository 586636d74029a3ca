"""A device's federated ALS round: solve the user factor from the log, release bounded sums.

The same function serves a one-user device and a node's block (a device is a block of one):
every user's factor is solved exactly from all of their training items against the received
table (:func:`~fedrec.training.als.solve.solve_users`) and kept in the device state (the
evaluation and on-device recommendations solve it again against the newest table); the released
statistics (:mod:`fedrec.training.als.statistics`) use the clipped factor and at most
``max_items`` items drawn with the user's round seed, among the items the table trains (the
server leaves the others at a zero row). Nothing is charged to the device's ledger:
DP-ALS adds its noise to the aggregate (``fedrec.privacy.als``), and the server accounts for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrec.model.spec import ITEM_EMBEDDING, USER_EMBEDDING
from fedrec.protocol.settings import AlsSpec
from fedrec.training.als.covariance import covariance_of, popularity_of
from fedrec.training.als.solve import solve_users, table_gram
from fedrec.training.als.statistics import clip_factors, released_items, statistics_of
from fedrec.training.state import (
    CohortMember,
    CohortRound,
    DeviceState,
    LocalData,
    MemberOutcome,
    RoundResult,
)


def user_state_arrays(factor: np.ndarray) -> dict[str, np.ndarray]:
    """A solved factor in the MF model's user-side name (so one scorer serves both; ALS is
    implicit-only, so there is no user bias)."""
    return {USER_EMBEDDING: np.asarray(factor, np.float32).reshape(1, -1)}


def als_round(
    item_arrays: dict[str, np.ndarray],
    members: Sequence[CohortMember],
    *,
    spec: AlsSpec,
    explicit: bool,
    keep_updates: bool = False,
) -> CohortRound:
    """Every member's ALS round against the received table; ``update_sum`` holds the summed
    statistics and ``weight_sum`` how many users they sum."""
    table = np.asarray(item_arrays[ITEM_EMBEDDING], dtype=np.float64)
    outcomes: list[MemberOutcome] = []
    trainable = []
    for member in members:
        if explicit:
            reason = "algorithm=als serves implicit feedback (dataset.mode=implicit)"
        elif len(member.data.train_items) == 0:
            reason = "this user has no training interactions"
        else:
            trainable.append(member)
            continue
        outcomes.append(MemberOutcome(member.key, "failed", member.state, reason=reason))
    gram = table_gram(table)
    factors = solve_users(
        table,
        [m.data.train_items for m in trainable],
        reg=spec.reg,
        unobserved_weight=spec.unobserved_weight,
        gram=gram,
        reg_exponent=spec.reg_exponent,
    )
    released = clip_factors(factors, spec.clip_norm)
    # Items the server left untrained (a zero row: not frequent in the private count release)
    # would waste the item budget: the statistics are drawn among the trained ones.
    trained_rows = np.any(table != 0, axis=1)
    release = _START_RELEASES.get(spec.release)
    chosen = [
        released_items(
            m.data.train_items[trained_rows[m.data.train_items]],
            spec.max_items,
            np.random.default_rng(m.seed),
        )
        for m in trainable
    ]
    updates = {}
    for row, member in enumerate(trainable):
        observed = table[member.data.train_items] @ factors[row]
        loss = float(np.mean((1 - observed) ** 2))
        state = DeviceState(
            user_arrays=user_state_arrays(factors[row]),
            ledger=member.state.ledger,
            rounds_trained=member.state.rounds_trained + 1,
        )
        outcomes.append(MemberOutcome(member.key, "trained", state, loss, 1, 0.0))
        if keep_updates:
            updates[member.key] = (
                release([member.data.train_items], table)
                if release
                else statistics_of(
                    released[row : row + 1], chosen[row : row + 1], item_grams=spec.item_grams
                ).to_arrays()
            )
    order = {m.key: i for i, m in enumerate(members)}
    outcomes.sort(key=lambda o: order[o.key])
    if release:
        total = release([m.data.train_items for m in trainable], table)
    else:
        total = statistics_of(released, chosen, item_grams=spec.item_grams).to_arrays()
    return CohortRound(total, float(len(trainable)), outcomes, updates)


# A covariance_start run's first two rounds send these instead of the factor statistics.
_START_RELEASES = {
    "popularity": lambda item_lists, table: popularity_of(item_lists),
    "covariance": covariance_of,
}


def als_one(
    item_arrays: dict[str, np.ndarray],
    data: LocalData,
    state: DeviceState,
    *,
    spec: AlsSpec,
    explicit: bool,
    seed: int | None,
) -> RoundResult:
    """One device's ALS round (the embeddable client's and a deployed node's): the same
    :func:`als_round` as a simulated block of one. ``item_update`` holds the user's statistics;
    ``ValueError`` where the round cannot run (ratings, an empty log)."""
    result = als_round(
        item_arrays, [CohortMember(0, data, state, seed)], spec=spec, explicit=explicit
    )
    outcome = result.outcomes[0]
    if outcome.status != "trained":
        raise ValueError(outcome.reason)
    return RoundResult(result.update_sum, outcome.state, outcome.loss, outcome.steps, 1.0, 0.0)
