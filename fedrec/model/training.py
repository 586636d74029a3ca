"""The training step and epoch: the one loop that every kind of training calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedrec.model.objective import Objective
from fedrec.model.spec import OPTIMIZER_NAMES

OPTIMIZERS = dict(
    zip(OPTIMIZER_NAMES, (torch.optim.SGD, torch.optim.Adam, torch.optim.Adagrad), strict=True)
)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainSpec:
    """Mirrors the training keys of the configs.

    ``l2`` is the per-example penalty on the parameters an example touches (as in Surprise's
    SVD); ``weight_decay`` is the optimizer's decay of every parameter at every step.
    """

    epochs: int = 20
    batch_size: int = 256
    lr: float = 0.005
    optimizer: str = "adam"
    weight_decay: float = 0.0
    l2: float = 0.0
    num_negatives: int = 4
    lr_schedule: str = "constant"  # cosine: decay to 0 over the epochs (lands on a minimum,
    # where a constant rate leaves the last epoch wherever Adam's oscillation happens to be)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer='{self.optimizer}'; accepted: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule='{self.lr_schedule}'; accepted: {', '.join(LR_SCHEDULES)}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr}; expected > 0")
        for name in ("weight_decay", "l2"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}; expected >= 0")


def make_optimizer(params: Iterable[nn.Parameter], spec: TrainSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.optimizer](params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: TrainSpec
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped once per epoch; None for a constant rate."""
    if spec.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    return None


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    objective: Objective,
    criterion: nn.Module,
    generator: torch.Generator | None = None,
) -> tuple[float, int]:
    """One pass over ``batches`` of (users, items, ratings). Returns (mean loss, steps taken).

    ``criterion`` is passed in rather than built here because Opacus' ghost clipping replaces it
    with a wrapper that must see every loss. An empty batch (Poisson sampling can draw nobody)
    still takes its step, on one zero-weight padding example: the privacy accountant counts
    every step, and DP-SGD adds its noise to it whether or not anyone was sampled.
    """
    model.train()
    total, steps = 0.0, 0
    for users, items, ratings in batches:
        weights = None
        if len(users) == 0:
            users, items = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
            ratings, weights = torch.zeros(1), torch.zeros(1)
        candidates, targets = objective.inputs_and_targets(items, ratings, generator)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(users, candidates, with_penalty=True), targets, weights)
        loss.backward()
        optimizer.step()
        total += float(loss.item())
        steps += 1
    return (total / steps if steps else float("nan")), steps
