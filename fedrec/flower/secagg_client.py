"""The device side of Flower's SecAgg+ (``secure_aggregation=secaggplus``): message translation.

In flwr 1.41 SecAgg+ exists only on the legacy path. The server's
``SecAggPlusWorkflow`` sends legacy ``FitIns``/``EvaluateIns`` records (``fitins.parameters``,
``fitins.config``) and Flower's ``secaggplus_mod`` reads the app's reply as a legacy ``FitRes``
(``fitres.parameters`` + ``fitres.num_examples``), then masks and quantizes it. So the one ClientApp
(:mod:`fedrec.flower.client_app`, with ``secaggplus_mod`` added) translates those legacy records to
the plain request its devices answer and back (:func:`legacy_train_reply`): one trainer, one
consent gate, one ledger. Evaluation and discovery are plain messages on this path too.

Deprecated or legacy pieces this path is forced to use, and why: ``flwr.client.mod.secaggplus_mod``
(there is no ``flwr.clientapp.mod`` SecAgg+ mod), and the legacy ``FitRes``/``EvaluateRes``/
``Status`` types with ``flwr.compat``'s record conversions (the mod reads the reply in that form).

Federated ALS (``algorithm=als``) sends its statistics instead of an item update, spread over
the whole catalogue (:func:`~fedrec.training.als.statistics.dense_statistics`), since SecAgg+
masks fixed-shape vectors; under distributed DP-ALS (``als.noise_shares`` > 0) with this
device's share of the noise added first (:func:`~fedrec.privacy.als.noise_share`), so the
server's unmasked sum is already noisy.

What leaves the device: the item update *masked* (quantized to integers in
``[0, quantization_range)`` after clipping to ``±clipping_range``, plus pairwise and private masks
modulo ``modulus_range``), and the scalar metrics in the clear (loss, ε, the declined/refused flags,
``num-examples``). A device that declines, refuses or has no budget left still takes part in the
protocol with a zero update of weight 0, so the sum stays well formed; its flags say why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat

from fedrec.model.spec import ITEM_EMBEDDING
from fedrec.privacy.als import noise_share
from fedrec.protocol.settings import parse_round_config
from fedrec.protocol.wire import NUM_EXAMPLES, ROUND_REFUSED
from fedrec.training.als.statistics import SECURE_NAMES, dense_statistics

# The legacy Parameters are an unnamed list: the server names them, in order, under this key of
# the round config (taken out before the device parses the rest).
ARRAY_NAMES_KEY = "secagg.array-names"
CLIPPED_VALUES = "secagg_clipped_values"  # metric: values SecAgg+ will clip to ±clipping_range
_OK = Status(code=Code.OK, message="")
Answer = Callable[[dict[str, Any], dict[str, np.ndarray]], tuple[dict | None, dict[str, Any]]]


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


def legacy_train_reply(msg: Message, context: Context, answer: Answer) -> Message:
    """Translate a SecAgg+ ``fitins`` request to the plain one the device answers
    (``answer(config, arrays) -> (update or None, one-user metrics)``), and its answer to the
    ``FitRes`` that ``secaggplus_mod`` masks."""
    config, parameters = _instruction(msg, "fitins")
    request = _legacy_request(config, parameters)
    if request is None:
        received = parameters_to_ndarrays(parameters)
        update_list = [np.zeros_like(value) for value in received]
        metrics: dict[str, Any] = {NUM_EXAMPLES: 0, ROUND_REFUSED: 1}
    else:
        config, received, names = request
        update, metrics = answer(config, received)
        if update is None:  # declined/refused/no budget: take part with weight 0
            metrics[NUM_EXAMPLES] = 0
        if config.get("algorithm") == "als":  # the statistics, dense over the catalogue
            num_items, dim = np.shape(received[ITEM_EMBEDDING])
            dense = dense_statistics(update, num_items, dim)
            spec = parse_round_config(config).als
            if update is not None and spec.noise_shares > 0:  # distributed DP-ALS
                dense = noise_share(dense, spec)
            update, names = dense, list(SECURE_NAMES)
        elif update is None:
            update = {name: np.zeros_like(value) for name, value in received.items()}
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


def is_legacy_train(msg: Message) -> bool:
    """A SecAgg+ training request (the workflow's legacy records), not a plain one."""
    return "fitins.parameters" in msg.content.array_records
