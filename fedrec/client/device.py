"""The device adapter: a deployed node's user, served from their own store.

A SuperNode whose node config names ``store="/path/user.sqlite"`` answers every request through
that store's :class:`~fedrec.client.FedrecClient`, so its consent gate, privacy ledger and
sent-log apply; ``holdout-latest=n`` holds the newest n interactions out for evaluation
(default 1). The answers are plain values in the one-user reply schema
(:func:`fedrec.protocol.replies.encode_user_reply`); the Flower ClientApp only carries them.

A node config that names no usable store is the operator's to fix, so the reply says which
(:class:`~fedrec.protocol.wire.RefusalReason` ``STORE_MISSING`` / ``STORE_UNUSABLE``, logged by
the server) instead of failing every message with a library hint.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.client.consent import ConsentRequired
from fedrec.client.local_client import FedrecClient, NothingToTrain
from fedrec.client.store import StoreError
from fedrec.privacy.ledger import PrivacyBudgetExhausted
from fedrec.protocol.replies import UserOutcome, encode_user_evaluation, encode_user_reply
from fedrec.protocol.settings import parse_round_config
from fedrec.protocol.wire import CONSENT_MISSING, NO_TRAINING_DATA, RefusalReason, RoundRefused

STORE_KEY, HOLDOUT_KEY = "store", "holdout-latest"
logger = logging.getLogger("fedrec.client")
Reply = tuple[dict[str, np.ndarray] | None, dict[str, Any]]


def store_problem(node_config: Mapping[str, Any]) -> RoundRefused | None:
    """Why this node's store cannot serve (None: it can). Checked at start-up (the discovery
    request) and before every round, worded for the operator who wrote the node config."""
    path = Path(str(node_config[STORE_KEY]))
    if not path.is_file():
        return RoundRefused(
            f"node config store='{path}': no such file. Create the user's store first "
            f"(fedrec store create {path} --num-items N) or fix the path",
            RefusalReason.STORE_MISSING,
        )
    try:
        holdout = int(node_config.get(HOLDOUT_KEY, 1))
        FedrecClient.open(str(path), holdout_latest=holdout).close()
    except (StoreError, ValueError) as err:
        return RoundRefused(f"node config store='{path}': {err}", RefusalReason.STORE_UNUSABLE)
    return None


def open_store_client(node_config: Mapping[str, Any]) -> FedrecClient:
    """The client of the store the node config names (raises :class:`RoundRefused`)."""
    problem = store_problem(node_config)
    if problem is not None:
        raise problem
    holdout = int(node_config.get(HOLDOUT_KEY, 1))
    return FedrecClient.open(str(node_config[STORE_KEY]), holdout_latest=holdout)


def train_from_store(
    node_config: Mapping[str, Any], arrays: dict[str, np.ndarray], config: dict[str, Any]
) -> Reply:
    """The store's answer to a training request: (update or None, the one-user metrics)."""
    try:
        settings = parse_round_config(config)
        with open_store_client(node_config) as client:
            try:
                update = client.train_round(arrays, settings)
            except ConsentRequired:
                return None, encode_user_reply(UserOutcome(0, "declined", reason=CONSENT_MISSING))
            except NothingToTrain:
                return None, encode_user_reply(UserOutcome(0, "declined", reason=NO_TRAINING_DATA))
            except PrivacyBudgetExhausted:
                ledger = client.store.ledger()
                spent = ledger.epsilon if ledger else 0.0
                return None, encode_user_reply(UserOutcome(0, "budget_exhausted", spent))
    except RoundRefused as err:  # a table that does not fit, looks crafted; a bad store
        logger.warning("refused the server's train request: %s", err)
        return None, encode_user_reply(UserOutcome(0, "refused", reason=int(err.reason)))
    return update.item_update, dict(update.metrics)


def evaluate_from_store(
    node_config: Mapping[str, Any], arrays: dict[str, np.ndarray], config: dict[str, Any]
) -> dict[str, Any]:
    """The store's metrics for an evaluation request (``evaluated`` 0 when it has none)."""
    try:
        settings = parse_round_config(config)
        with open_store_client(node_config) as client:
            try:
                metrics = client.evaluate(arrays, settings)
            except (ConsentRequired, NothingToTrain):
                metrics = {}
    except RoundRefused as err:
        logger.warning("refused the server's evaluate request: %s", err)
        metrics = {}
    return encode_user_evaluation(metrics)
