"""A device scores the current model on its own held-out items; only the metrics leave it."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from fedrec.eval.metrics import ranking_metrics_for_user, rating_errors_for_user
from fedrec.model.mf import USER_SIDE, ModelSpec
from fedrec.model.objective import Objective
from fedrec.model.training import TrainSpec, make_optimizer, train_epoch
from fedrec.protocol.settings import LocalEvalSpec
from fedrec.training.budget import seeded_generator
from fedrec.training.opacus_round import examples_of, local_model
from fedrec.training.state import DeviceState, LocalData


def evaluate_user(
    item_arrays: dict[str, np.ndarray],
    data: LocalData,
    state: DeviceState,
    *,
    model_spec: ModelSpec,
    eval_spec: LocalEvalSpec,
    explicit: bool,
    num_negatives: int,
    seed: int | None,
) -> dict[str, float]:
    """Metrics of this user against the current item table, computed on the device.

    The user embedding is the one kept from the user's last training round (a fresh random one
    if they never trained). With ``refit_epochs > 0`` a throw-away copy of it is first refitted
    to the current item table on the user's training log (item side frozen, no DP: nothing but
    the metrics leaves the device); the kept embedding is never replaced by it, because a
    non-private fit must not become the starting point of a DP round.
    """
    if len(data.test_items) == 0:
        raise ValueError("this user has no test interactions to evaluate")
    generator = seeded_generator(seed)
    model = local_model(
        item_arrays, state, model_spec=model_spec, explicit=explicit, generator=generator
    )
    if eval_spec.refit_epochs > 0 and len(data.train_items):
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in USER_SIDE)
        spec = TrainSpec(
            epochs=eval_spec.refit_epochs,
            batch_size=len(data.train_items),
            lr=eval_spec.refit_lr,
            optimizer="adam",
            num_negatives=max(num_negatives, 1),
        )
        objective = Objective(
            explicit=explicit, num_negatives=spec.num_negatives, num_items=model.num_items
        )
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], spec)
        loader = DataLoader(examples_of(data), batch_size=spec.batch_size)
        for _ in range(spec.epochs):
            train_epoch(model, optimizer, loader, objective, objective.criterion(), generator)
    scores = model.score_all_items(torch.zeros(1, dtype=torch.long))[0].numpy()
    metrics: dict[str, float] = {}
    if eval_spec.full_metrics or eval_spec.sampled_metrics:
        metrics = ranking_metrics_for_user(
            scores,
            train_items=data.train_items,
            test_items=data.test_items,
            negatives=data.negatives,
            full_metrics=eval_spec.full_metrics,
            sampled_metrics=eval_spec.sampled_metrics if data.negatives is not None else [],
        )
    if eval_spec.rating_metrics and data.test_ratings is not None:
        metrics |= rating_errors_for_user(scores[data.test_items], data.test_ratings)
    return metrics
