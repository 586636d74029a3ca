"""The cohort engine's Flower ClientApp: one simulation node holds a block of users.

Flower's per-node cost (message routing, and the in-memory link state's scans) is paid per node,
so 6,040 one-user nodes cannot make a round in a minute on two cores. Here a node simulates a
contiguous block of users; every user still trains alone (:func:`train_cohort`), keeps their own
embedding and ledger in the node's state, and the node replies with the mean of its users'
item-side updates (weighted like the per-user path) and per-user scalars (ε, outcome counts).
Which users take part in a round is drawn the same way on every node from a seed the server
sends, so the round samples ``clients_per_round`` users out of all of them, uniformly.

Under user-level DP (privacy modes ``user``, ``both``) two things change, so that the server's
DP-FedAvg release is the same mechanism as on the per-user path (:mod:`fedrec.privacy.user_level`):
users are Poisson-sampled (each independently with q = clients_per_round / num_clients, which is
what the accountant analyses), and the node replies with the **sum** of its users' updates, each
clipped to ``user_clip_norm`` by the device's own :func:`clip_update`, and the count it summed
(``users_summed``). The server adds the nodes' sums, the noise, and divides by q·N.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.app import EVAL_SEED, TRAIN_SEED
from fedrec.client.closed_form import CohortMember, train_cohort
from fedrec.client.data_source import SplitUserSource
from fedrec.client.messages import (
    ARRAYS_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    USERS_SUMMED,
    RoundRefused,
    RoundSettings,
    check_received_arrays,
    parse_round_config,
    user_seed,
)
from fedrec.client.state_store import DeviceStateStore, request_digest
from fedrec.client.table_check import check_item_table
from fedrec.client.trainer import DeviceState, evaluate_user
from fedrec.privacy.ledger import LedgerEntry, PrivacyLedger

logger = logging.getLogger("fedrec.client")

PREFIX = "cohort."
USERS_RECORD, LEDGER_RECORD, LEDGER_SETTINGS = "cohort.users", "cohort.ledger", "cohort.privacy"
# What became of each user a node was asked for; "refused": the node's devices refused the
# received table (as train_reply does on the per-user path), so none of them trained on it.
OUTCOMES = ("trained", "rejected", "failed", "budget_exhausted", "refused")
_LEDGER_COLUMNS = ("user", "server_round", "noise_multiplier", "sample_rate", "steps", "epsilon")


@dataclass
class CohortPlan:
    """What every node must agree on to sample the same users (sent in the round config)."""

    num_clients: int
    clients_per_round: int
    eval_clients_per_round: int
    sample_seed: int
    chunk_size: int = 256
    # 1: Poisson sampling of training users at q = clients_per_round / num_clients (user-level
    # DP needs it); 0: exactly clients_per_round users, uniformly.
    poisson_sampling: int = 0

    def config(self) -> dict[str, int]:
        return {f"{PREFIX}{name}": int(value) for name, value in self.__dict__.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CohortPlan:
        try:
            plan = cls(**{k[len(PREFIX) :]: int(v) for k, v in config.items()})
        except TypeError as err:
            raise RoundRefused(f"bad cohort config: {err}") from None
        if not 0 <= plan.clients_per_round <= plan.num_clients:
            raise RoundRefused(f"cohort: {plan.clients_per_round} of {plan.num_clients} users")
        return plan


def sampled_users(plan: CohortPlan, server_round: int, evaluation: bool) -> np.ndarray:
    """The round's users (indices into the federation), the same on every node.

    With ``plan.poisson_sampling`` a training round takes each user independently with
    probability q = clients_per_round / num_clients (q = 1: everyone), so the number of users
    varies from round to round; evaluation always takes a fixed number."""
    count = plan.eval_clients_per_round if evaluation else plan.clients_per_round
    rng = np.random.default_rng([plan.sample_seed, server_round, int(evaluation)])
    if plan.poisson_sampling and not evaluation:
        rate = plan.clients_per_round / plan.num_clients
        return np.flatnonzero(rng.random(plan.num_clients) < rate)
    if count >= plan.num_clients:
        return np.arange(plan.num_clients)
    return np.sort(rng.choice(plan.num_clients, count, replace=False))


def node_block(node_config: Mapping[str, Any], num_clients: int) -> range:
    """Node ``partition-id`` p of ``num-partitions`` P holds users [p·N/P, (p+1)·N/P)."""
    try:
        partition, partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("node_config needs integer 'partition-id' and 'num-partitions'") from None
    return range(partition * num_clients // partitions, (partition + 1) * num_clients // partitions)


def _split_config(msg: Message):
    config = dict(msg.content[CONFIG_KEY])
    cohort = {k: v for k, v in config.items() if k.startswith(PREFIX)}
    settings = parse_round_config({k: v for k, v in config.items() if not k.startswith(PREFIX)})
    arrays = {name: array.numpy() for name, array in msg.content[ARRAYS_KEY].items()}
    return CohortPlan.from_config(cohort), settings, arrays


def _members_of(plan: CohortPlan, server_round: int, context: Context, evaluation: bool):
    block = node_block(dict(context.node_config), plan.num_clients)
    chosen = sampled_users(plan, server_round, evaluation)
    return [int(u) for u in chosen if block.start <= u < block.stop]


def _stored_states(state_store: str, keys: list[int], server_round: int, request: str | None):
    """These users' states from the per-run store (:mod:`fedrec.client.state_store`)."""
    with DeviceStateStore(state_store) as store:
        return {key: store.load(key, server_round, request=request) for key in keys}


def cohort_train_reply(
    plan: CohortPlan,
    settings: RoundSettings,
    arrays: dict[str, np.ndarray],
    config: dict[str, Any],
    context: Context,
    source: SplitUserSource,
    state_store: str | None = None,
) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """A cohort node's answer to one training request, as plain values: the released arrays
    (the mean of its users' updates, or their clipped sum under user-level DP; None if no one
    trained) and the metrics. Before any user trains, the node runs the checks every device
    runs in :func:`fedrec.client.app.train_reply` (names, shapes, dtypes, finiteness, then the
    table's plausibility); a refused table is refused by all of the node's users of the round.
    """
    user_level = settings.privacy.user_level
    if user_level and (not plan.poisson_sampling or settings.weight_by_examples):
        # Fail closed: the server's accountant assumes Poisson-sampled, equally weighted users.
        raise RoundRefused(
            "user-level DP on cohort nodes needs Poisson sampling of users and uniform weights"
        )
    chosen = [
        (index, *source.local_data({"partition-id": index}))
        for index in _members_of(plan, settings.server_round, context, evaluation=False)
    ]
    if chosen:
        try:  # every user of the round receives the same table: one check answers for all
            check_received_arrays(arrays, settings, num_items=chosen[0][2].num_items)
            check_item_table(arrays)
        except RoundRefused as err:
            logger.warning("refused the server's train request for %d users: %s", len(chosen), err)
            return None, _metrics_of_refusal(len(chosen))
    request = None
    if state_store is None:
        states = load_cohort_states(context.state)
    else:
        if settings.seed >= 0:  # a repeat of this very request replays identically
            request = request_digest(arrays, config)
        keys = [key for _, key, _ in chosen]
        states = _stored_states(state_store, keys, settings.server_round, request)
    members = []
    for _, key, data in chosen:
        seed = user_seed(settings, key, TRAIN_SEED)
        members.append(CohortMember(key, data, states.get(key, DeviceState()), seed))
    weights = [
        float(len(m.data.train_items)) if settings.weight_by_examples else 1.0 for m in members
    ]
    result = train_cohort(
        arrays,
        members,
        model_spec=settings.model,
        training=settings.training,
        privacy=settings.privacy,
        explicit=settings.explicit,
        server_round=settings.server_round,
        weights=weights,
        chunk_size=plan.chunk_size,
    )
    changed = {o.key: o.state for o in result.outcomes if o.status in ("trained", "rejected")}
    # Saved before the reply leaves: the spend of every user who trained is recorded.
    if state_store is None:
        store_cohort_states(context.state, states | changed)
    elif changed:
        with DeviceStateStore(state_store) as store:
            store.save_many(settings.server_round, changed, request=request)
    counts = {f"users_{s}": sum(o.status == s for o in result.outcomes) for s in OUTCOMES}
    trained = [o for o in result.outcomes if o.status == "trained"]
    spent = [o for o in result.outcomes if o.status != "failed"]
    metrics: dict[str, Any] = {
        NUM_EXAMPLES: result.weight_sum,
        "users_sampled": len(members),
        **counts,
        "epsilon_users": [o.key for o in spent],
        "epsilon_values": [float(o.epsilon) for o in spent],
        "budget_exhausted_users": [o.key for o in spent if o.status == "budget_exhausted"],
    }
    released = None
    if trained:
        metrics["train_loss"] = float(np.mean([o.loss for o in trained]))
        if user_level:  # the sum of per-user clipped updates (weights are all 1 here)
            metrics[USERS_SUMMED] = len(trained)
            released = result.update_sum
        else:
            released = {k: v / result.weight_sum for k, v in result.update_sum.items()}
    return released, metrics


def _metrics_of_refusal(users: int) -> dict[str, Any]:
    """A node's reply when its devices refused the table: no arrays, nothing spent."""
    return {
        NUM_EXAMPLES: 0,
        "users_sampled": users,
        **{f"users_{s}": users if s == "refused" else 0 for s in OUTCOMES},
        "epsilon_users": [],
        "epsilon_values": [],
        "budget_exhausted_users": [],
    }


def build_cohort_app(
    source: SplitUserSource, mods: Sequence = (), state_store: str | None = None
) -> ClientApp:
    """``state_store``: keep the users' states in this per-run SQLite file instead of the
    node's ``Context.state``, so that they survive the process (a resumed run)."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        plan, settings, arrays = _split_config(msg)
        released, metrics = cohort_train_reply(
            plan, settings, arrays, dict(msg.content[CONFIG_KEY]), context, source, state_store
        )
        content = {}
        if released is not None:
            content[ARRAYS_KEY] = ArrayRecord(
                {k: Array(np.asarray(v, dtype=np.float32)) for k, v in released.items()}
            )
        content[METRICS_KEY] = MetricRecord(metrics)
        return Message(content=RecordDict(content), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        plan, settings, arrays = _split_config(msg)
        chosen = [
            source.local_data({"partition-id": index})
            for index in _members_of(plan, settings.server_round, context, evaluation=True)
        ]
        chosen = [(key, data) for key, data in chosen if len(data.test_items)]
        if state_store is None:
            states = load_cohort_states(context.state)
        else:
            keys = [key for key, _ in chosen]
            states = _stored_states(state_store, keys, settings.server_round + 1, None)
        per_user: list[dict[str, float]] = []
        for key, data in chosen:
            per_user.append(
                evaluate_user(
                    arrays,
                    data,
                    states.get(key, DeviceState()),
                    model_spec=settings.model,
                    eval_spec=settings.evaluation,
                    explicit=settings.explicit,
                    num_negatives=settings.training.num_negatives,
                    seed=user_seed(settings, key, EVAL_SEED),
                )
            )
        names = sorted({name for row in per_user for name in row})
        metrics: dict[str, Any] = {
            NUM_EXAMPLES: max(len(per_user), 1),
            "users_evaluated": len(per_user),
        }
        for name in names:  # a metric a user could not compute is NaN in its list
            metrics[f"user.{name}"] = [float(row.get(name, np.nan)) for row in per_user]
        return Message(content=RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)

    return app


def load_cohort_states(records: RecordDict) -> dict[int, DeviceState]:
    """Every user of this node who trained so far: embedding, ledger, rounds trained."""
    users = records.get(USERS_RECORD)
    if users is None:
        return {}
    arrays = {name: array.numpy() for name, array in users.items()}
    keys = arrays.pop("keys")
    rounds = arrays.pop("rounds_trained")
    ledgers: dict[int, list[LedgerEntry]] = {}
    settings = records.get(LEDGER_SETTINGS)
    if LEDGER_RECORD in records:
        columns = [records[LEDGER_RECORD][c].numpy() for c in _LEDGER_COLUMNS]
        for user, r, n, q, s, e in zip(*columns, strict=True):
            ledgers.setdefault(int(user), []).append(
                LedgerEntry(int(r), float(n), float(q), int(s), float(e))
            )
    states = {}
    for row, key in enumerate(keys.tolist()):
        ledger = None
        if key in ledgers:
            ledger = PrivacyLedger(
                str(settings["accountant"]), float(settings["delta"]), ledgers[key]
            )
        user_arrays = {name: values[row] for name, values in arrays.items()}
        states[key] = DeviceState(user_arrays, ledger, int(rounds[row]))
    return states


def store_cohort_states(records: RecordDict, states: dict[int, DeviceState]) -> None:
    if not states:
        return
    keys = sorted(states)
    names = sorted(states[keys[0]].user_arrays or {})
    users = {
        "keys": np.asarray(keys, dtype=np.int64),
        "rounds_trained": np.asarray([states[k].rounds_trained for k in keys], dtype=np.int64),
    }
    for name in names:
        users[name] = np.stack([states[k].user_arrays[name] for k in keys])
    records[USERS_RECORD] = ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in users.items()}
    )
    entries = [(k, e) for k in keys if states[k].ledger for e in states[k].ledger.entries]
    if entries:
        ledger = next(states[k].ledger for k in keys if states[k].ledger)
        records[LEDGER_SETTINGS] = ConfigRecord(
            {"accountant": ledger.accountant, "delta": ledger.delta}
        )
        columns = {
            "user": np.asarray([k for k, _ in entries], dtype=np.int64),
            "server_round": np.asarray([e.server_round for _, e in entries], dtype=np.int64),
            "noise_multiplier": np.asarray([e.noise_multiplier for _, e in entries]),
            "sample_rate": np.asarray([e.sample_rate for _, e in entries]),
            "steps": np.asarray([e.steps for _, e in entries], dtype=np.int64),
            "epsilon": np.asarray([e.epsilon for _, e in entries]),
        }
        records[LEDGER_RECORD] = ArrayRecord({k: Array(v) for k, v in columns.items()})
