"""The centralized reference: all data in one place, no privacy. The upper bound every federated
and private result is compared with, trained by the same step as the clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from fedrec.data.log import InteractionLog
from fedrec.model.mf import MatrixFactorization, ModelSpec
from fedrec.model.objective import Objective
from fedrec.model.training import TrainSpec, make_optimizer, make_scheduler, train_epoch

logger = logging.getLogger(__name__)

EpochCallback = Callable[[int, float, MatrixFactorization], None]


def shuffled_batches(
    train: InteractionLog, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    users = torch.as_tensor(train.users, dtype=torch.long)
    items = torch.as_tensor(train.items, dtype=torch.long)
    ratings = torch.as_tensor(
        train.ratings if train.ratings is not None else np.ones(len(train)), dtype=torch.float32
    )
    order = torch.randperm(len(users), generator=generator)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield users[rows], items[rows], ratings[rows]


def build_model(
    train: InteractionLog,
    spec: ModelSpec,
    *,
    explicit: bool,
    generator: torch.Generator,
    num_users: int | None = None,
) -> MatrixFactorization:
    global_mean = float(train.ratings.mean()) if explicit and train.ratings is not None else 0.0
    return MatrixFactorization(
        train.num_users if num_users is None else num_users,
        train.num_items,
        spec.embedding_dim,
        explicit=explicit,
        init_std=spec.init_std,
        global_mean=global_mean,
        generator=generator,
    )


def fit_centralized(
    train: InteractionLog,
    model_spec: ModelSpec,
    train_spec: TrainSpec,
    *,
    explicit: bool,
    seed: int = 0,
    on_epoch: EpochCallback | None = None,
) -> MatrixFactorization:
    """Train MF on every user's training log at once."""
    if explicit and train.ratings is None:
        raise ValueError("explicit training needs ratings in the training log")
    generator = torch.Generator().manual_seed(seed)
    model = build_model(train, model_spec, explicit=explicit, generator=generator)
    objective = Objective(
        explicit=explicit,
        num_negatives=train_spec.num_negatives,
        num_items=train.num_items,
        l2=train_spec.l2,
    )
    criterion = objective.criterion()
    optimizer = make_optimizer(model.parameters(), train_spec)
    scheduler = make_scheduler(optimizer, train_spec)
    for epoch in range(train_spec.epochs):
        started = time.perf_counter()
        loss, _ = train_epoch(
            model,
            optimizer,
            shuffled_batches(train, train_spec.batch_size, generator),
            objective,
            criterion,
            generator,
        )
        if scheduler is not None:
            scheduler.step()
        logger.info("epoch %d loss %.4f (%.1fs)", epoch + 1, loss, time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(epoch + 1, loss, model)
    return model
