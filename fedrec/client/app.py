"""The Flower ClientApp: a thin adapter from Messages to the on-device trainer.

A node serves one user from one of two places, picked by its node config:
- ``store="/path/user.sqlite"`` (deployment): the user's :class:`FedrecClient` store. Training
  and evaluation go through the client object, so its consent gate, privacy ledger and sent-log
  apply; ``holdout-latest=n`` holds the newest n interactions out for evaluation (default 1).
- otherwise (simulation): ``source`` (e.g. a split, by ``partition-id``), with the device state
  kept in Flower's ``Context.state``, or, with ``state_store`` (a per-run SQLite file, see
  :mod:`fedrec.client.state_store`), there, so that it survives the simulation's processes.

A user who has not consented, or has nothing consented to train on, replies with metrics only
(``num-examples`` 0 and ``consent_missing`` 1 or ``no_training_data`` 1): nothing is trained or
sent, and the round goes on without them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrec.client.consent import ConsentRequired
from fedrec.client.data_source import UserDataSource
from fedrec.client.device_state import load_device_state, store_device_state
from fedrec.client.local_client import EVAL_SEED, TRAIN_SEED, FedrecClient, NothingToTrain
from fedrec.client.messages import (
    ARRAYS_KEY,
    BUDGET_EXHAUSTED,
    CONFIG_KEY,
    CONSENT_MISSING,
    METRICS_KEY,
    NO_TRAINING_DATA,
    NUM_EXAMPLES,
    ROUND_REFUSED,
    RoundRefused,
    RoundSettings,
    check_received_arrays,
    parse_round_config,
    user_seed,
)
from fedrec.client.state_store import DeviceStateStore, request_digest
from fedrec.client.table_check import check_item_table
from fedrec.client.trainer import DeviceState, evaluate_user, train_round
from fedrec.privacy.ledger import PrivacyBudgetExhausted

STORE_KEY, HOLDOUT_KEY = "store", "holdout-latest"
logger = logging.getLogger("fedrec.client")
Reply = tuple[dict[str, np.ndarray] | None, dict[str, float]]  # (item update or None, metrics)


def _message(msg: Message, reply: Reply) -> Message:
    update, metrics = reply
    records: dict[str, Any] = {METRICS_KEY: MetricRecord(metrics)}
    if update is not None:
        records[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in update.items()})
    return Message(content=RecordDict(records), reply_to=msg)


def open_store_client(node_config: Mapping[str, Any]) -> FedrecClient:
    """The client of the store the node config names; the store must already exist."""
    holdout = int(node_config.get(HOLDOUT_KEY, 1))
    return FedrecClient.open(str(node_config[STORE_KEY]), holdout_latest=holdout)


def train_from_store(
    node_config: Mapping[str, Any], arrays: dict[str, np.ndarray], settings: RoundSettings
) -> Reply:
    with open_store_client(node_config) as client:
        try:
            update = client.train_round(arrays, settings)
        except ConsentRequired:
            return None, {NUM_EXAMPLES: 0, CONSENT_MISSING: 1}
        except NothingToTrain:
            return None, {NUM_EXAMPLES: 0, NO_TRAINING_DATA: 1}
        except PrivacyBudgetExhausted:
            ledger = client.store.ledger()
            spent = ledger.epsilon if ledger else 0.0
            return None, {NUM_EXAMPLES: 0, BUDGET_EXHAUSTED: 1, "epsilon": spent}
        except RoundRefused as err:  # a table that does not fit the store, or looks crafted
            logger.warning("refused the server's train request: %s", err)
            return None, {NUM_EXAMPLES: 0, ROUND_REFUSED: 1}
    return update.item_update, update.metrics


def evaluate_from_store(
    node_config: Mapping[str, Any], arrays: dict[str, np.ndarray], settings: RoundSettings
) -> dict[str, float]:
    with open_store_client(node_config) as client:
        try:
            metrics = client.evaluate(arrays, settings)
        except (ConsentRequired, NothingToTrain):
            metrics = {}
    return {NUM_EXAMPLES: 1, "evaluated": int(bool(metrics)), **metrics}


def _load_state(
    context: Context,
    state_store: str | None,
    user_key: int,
    settings: RoundSettings,
    *,
    request: str | None,
    after: bool = False,
) -> DeviceState:
    """The device state for this round: from the per-run store if there is one, else from
    ``Context.state``. ``request``: see :meth:`DeviceStateStore.load`; ``after``: the state once
    this round's training is done (for evaluation)."""
    if state_store is None:
        return load_device_state(context.state)
    with DeviceStateStore(state_store) as store:
        return store.load(user_key, settings.server_round + int(after), request=request)


def _save_state(
    context: Context,
    state_store: str | None,
    user_key: int,
    server_round: int,
    state: DeviceState,
    *,
    request: str | None,
) -> None:
    if state_store is None:
        store_device_state(context.state, state)
        return
    with DeviceStateStore(state_store) as store:
        store.save(user_key, server_round, state, request=request)


def _request_key(
    config: dict[str, Any], arrays: dict[str, np.ndarray], settings: RoundSettings
) -> str | None:
    """The request's digest in a seeded run (a repeat of it replays identically), else None."""
    if settings.seed < 0:
        return None
    return request_digest(arrays, config)


def train_reply(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    context: Context,
    source: UserDataSource,
    state_store: str | None = None,
) -> Reply:
    """The device's answer to one training request (item arrays + flat round config), as plain
    values. Every ClientApp (plain FedAvg, SecAgg+) answers through this one function, so the
    trainer, the consent gate and the fail-closed ledger are the same on every path."""
    try:
        settings = parse_round_config(config)
    except RoundRefused as err:
        logger.warning("refused the server's train request: %s", err)
        return None, {NUM_EXAMPLES: 0, ROUND_REFUSED: 1}
    node_config = dict(context.node_config)
    if STORE_KEY in node_config:
        return train_from_store(node_config, arrays, settings)
    user_key, data = source.local_data(node_config, dict(context.run_config))
    try:
        check_received_arrays(arrays, settings, num_items=data.num_items)
        check_item_table(arrays)  # a crafted table (ImplausibleTable) is refused, not trained on
    except RoundRefused as err:
        logger.warning("refused the server's train request: %s", err)
        return None, {NUM_EXAMPLES: 0, ROUND_REFUSED: 1}
    request = _request_key(config, arrays, settings) if state_store else None
    state = _load_state(context, state_store, user_key, settings, request=request)
    try:
        result = train_round(
            arrays,
            data,
            state,
            model_spec=settings.model,
            training=settings.training,
            privacy=settings.privacy,
            explicit=settings.explicit,
            seed=user_seed(settings, user_key, TRAIN_SEED),
            server_round=settings.server_round,
        )
    except PrivacyBudgetExhausted:
        # The user sits this round out and says so; nothing trained, nothing to send.
        spent = state.ledger.epsilon if state.ledger else 0.0
        return None, {NUM_EXAMPLES: 0, BUDGET_EXHAUSTED: 1, "epsilon": spent}
    # The state (user embedding, ledger) is saved before the update leaves: a device that
    # drops after this point has still recorded the privacy it spent.
    _save_state(
        context, state_store, user_key, settings.server_round, result.state, request=request
    )
    weight = len(data.train_items) if settings.weight_by_examples else 1
    metrics = {
        NUM_EXAMPLES: weight,
        "train_loss": result.loss,
        "epsilon": result.epsilon,
        "local_steps": result.steps,
    }
    return result.item_update, metrics


def evaluate_reply(
    config: dict[str, Any],
    arrays: dict[str, np.ndarray],
    context: Context,
    source: UserDataSource,
    state_store: str | None = None,
) -> dict[str, float]:
    """The device's metrics for one evaluation request (see :func:`train_reply`)."""
    metrics: dict[str, float] = {NUM_EXAMPLES: 1, "evaluated": 0}
    try:
        settings = parse_round_config(config)
    except RoundRefused as err:
        logger.warning("refused the server's evaluate request: %s", err)
        return metrics
    node_config = dict(context.node_config)
    if STORE_KEY in node_config:
        return evaluate_from_store(node_config, arrays, settings)
    user_key, data = source.local_data(node_config, dict(context.run_config))
    try:
        check_received_arrays(arrays, settings, num_items=data.num_items)
    except RoundRefused as err:
        logger.warning("refused the server's evaluate request: %s", err)
        return metrics
    if len(data.test_items):
        metrics |= evaluate_user(
            arrays,
            data,
            _load_state(context, state_store, user_key, settings, request=None, after=True),
            model_spec=settings.model,
            eval_spec=settings.evaluation,
            explicit=settings.explicit,
            num_negatives=settings.training.num_negatives,
            seed=user_seed(settings, user_key, EVAL_SEED),
        )
        metrics["evaluated"] = 1
    return metrics


def _unpack(msg: Message) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config = dict(msg.content[CONFIG_KEY]) if CONFIG_KEY in msg.content.config_records else {}
    arrays = (
        {name: array.numpy() for name, array in msg.content[ARRAYS_KEY].items()}
        if ARRAYS_KEY in msg.content.array_records
        else {}
    )
    return config, arrays


def build_client_app(
    source: UserDataSource, mods: Sequence = (), state_store: str | None = None
) -> ClientApp:
    """The simulation's (and ``flwr run``'s) ClientApp; ``state_store``: see the module doc."""
    app = ClientApp(mods=list(mods))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config, arrays = _unpack(msg)
        return _message(msg, train_reply(config, arrays, context, source, state_store))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        config, arrays = _unpack(msg)
        return _message(msg, (None, evaluate_reply(config, arrays, context, source, state_store)))

    return app
