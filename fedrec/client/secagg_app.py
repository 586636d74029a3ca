"""The ClientApp for Flower's SecAgg+ (``secure_aggregation=secaggplus``): a thin adapter.

Why a second adapter: in flwr 1.41 SecAgg+ exists only on the legacy path. The server's
``SecAggPlusWorkflow`` sends legacy ``FitIns``/``EvaluateIns`` records (``fitins.parameters``,
``fitins.config``) and Flower's ``secaggplus_mod`` reads the app's reply as a legacy ``FitRes``
(``fitres.parameters`` + ``fitres.num_examples``), then masks and quantizes it. So this app
translates those legacy records to the plain request fedrec's devices answer, and answers through
the very same functions as the plain ClientApp (:func:`fedrec.client.app.train_reply` /
:func:`~fedrec.client.app.evaluate_reply`): one trainer, one consent gate, one ledger.

Deprecated or legacy pieces this path is forced to use, and why: ``flwr.client.mod.secaggplus_mod``
(there is no ``flwr.clientapp.mod`` SecAgg+ mod), and the legacy ``FitRes``/``EvaluateRes``/
``Status`` types with ``flwr.compat``'s record conversions (the mod reads the reply in that form).

What leaves the device: the item update *masked* (quantized to integers in
``[0, quantization_range)`` after clipping to ``±clipping_range``, plus pairwise and private masks
modulo ``modulus_range``), and the scalar metrics in the clear (loss, ε, the declined/refused flags,
``num-examples``). A device that declines, refuses or has no budget left still takes part in the
protocol with a zero update of weight 0, so the sum stays well formed; its flags say why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from fedrec.client.app import evaluate_reply, train_reply
from fedrec.client.data_source import UserDataSource
from fedrec.client.messages import NUM_EXAMPLES, ROUND_REFUSED

# The legacy Parameters are an unnamed list: the server names them, in order, under this key of
# the round config (taken out before the device parses the rest).
ARRAY_NAMES_KEY = "secagg.array-names"
CLIPPED_VALUES = "secagg_clipped_values"  # metric: values SecAgg+ will clip to ±clipping_range
_OK = Status(code=Code.OK, message="")


def _instruction(msg: Message, kind: str) -> tuple[dict[str, Any], Parameters]:
    """The config and parameters of a legacy ``fitins``/``evaluateins`` record. Read directly,
    not through ``compat.recorddict_to_fitins``: that refuses list values, and the round config
    has some (e.g. ``evaluation.full_metrics``); the device's parser checks every value."""
    config = dict(msg.content.config_records[f"{kind}.config"])
    record = msg.content.array_records[f"{kind}.parameters"]
    return config, compat.arrayrecord_to_parameters(record, keep_input=True)


def _legacy_request(config: dict[str, Any], parameters) -> tuple[dict, dict, list[str]] | None:
    """(round config, named arrays, names) from a legacy instruction; None if malformed."""
    config = dict(config)
    names = str(config.pop(ARRAY_NAMES_KEY, "")).split(",")
    arrays = parameters_to_ndarrays(parameters)
    if len(names) != len(arrays) or len(set(names)) != len(names):
        return None
    return config, dict(zip(names, arrays, strict=True)), names


def _clipping_range(context: Context) -> float | None:
    """The ``clipping_range`` of this round's SecAgg+ setup stage, from the mod's node state."""
    state = context.state.config_records.get(RECORD_KEY_STATE)
    value = state.get("clipping_range") if state is not None else None
    return float(value) if value else None


def build_secagg_client_app(
    source: UserDataSource, mods: Sequence = (), state_store: str | None = None
) -> ClientApp:
    """A ClientApp with ``mods`` outermost, then Flower's ``secaggplus_mod``, then the adapter.

    ``source`` and ``state_store``: as for :func:`fedrec.client.app.build_client_app`. A mod
    in ``mods`` sees the training messages as they go over the wire: the protocol's four stages,
    with the masked vector in the reply of the ``collect_masked_vectors`` stage."""
    app = ClientApp(mods=[*mods, secaggplus_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config, parameters = _instruction(msg, "fitins")
        request = _legacy_request(config, parameters)
        if request is None:
            received = parameters_to_ndarrays(parameters)
            update_list = [np.zeros_like(value) for value in received]
            metrics: dict[str, Any] = {NUM_EXAMPLES: 0, ROUND_REFUSED: 1}
        else:
            config, received, names = request
            update, metrics = train_reply(config, received, context, source, state_store)
            if update is None:  # declined/refused/no budget: take part with weight 0
                update = {name: np.zeros_like(value) for name, value in received.items()}
                metrics[NUM_EXAMPLES] = 0
            update_list = [np.asarray(update[name]) for name in names]
            clip = _clipping_range(context)
            if clip is not None:
                metrics[CLIPPED_VALUES] = int(sum(np.sum(np.abs(u) > clip) for u in update_list))
        fitres = FitRes(
            status=_OK,
            parameters=ndarrays_to_parameters(update_list),
            num_examples=int(metrics[NUM_EXAMPLES]),
            metrics=metrics,
        )
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        request = _legacy_request(*_instruction(msg, "evaluateins"))
        metrics: dict[str, Any] = {NUM_EXAMPLES: 1, "evaluated": 0}
        if request is not None:
            config, received, _ = request
            metrics = evaluate_reply(config, received, context, source, state_store)
        res = EvaluateRes(
            status=_OK, loss=0.0, num_examples=int(metrics[NUM_EXAMPLES]), metrics=metrics
        )
        return Message(compat.evaluateres_to_recorddict(res), reply_to=msg)

    return app
