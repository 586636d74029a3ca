"""A user's whole local round drawn before any step: the batches and negatives of every step,
and the item rows they touch, so that a chunk can hold just those rows
(:mod:`fedrec.training.closed_form.sparse`)."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.model.mf import ModelSpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.engine import _epoch_schedule, _Plan
from fedrec.training.closed_form.step import ClosedFormStep


class DrawnRound:
    """A user's round drawn in advance: ``rows``, the sorted item rows it touches, and per epoch
    and step the examples (their items as positions in ``rows``)."""

    def __init__(
        self,
        plan: _Plan,
        user_init: torch.Tensor,
        steps: list[list[tuple]],
        rows: np.ndarray,
        lr: float,
    ) -> None:
        self.plan, self.user_init, self.steps, self.rows, self.lr = plan, user_init, steps, rows, lr

    def outside_std(self, steps: int) -> float:
        """Std of the noise one untouched row ends the round with: one Gaussian per step of
        std σC, scaled by the step's ``-lr / expected_batch`` (SGD)."""
        if self.plan.noise_std == 0:
            return 0.0
        return self.lr * self.plan.noise_std / self.plan.expected_batch * steps**0.5


def draw_round(
    plan: _Plan, drawer: ClosedFormStep, training: LocalTrainingSpec, private: bool, spec: ModelSpec
) -> DrawnRound:
    """Draw the round's batches and negatives in the device's order (the fresh user embedding
    first, then per epoch the loader's draws, per step the batch and its negatives)."""
    user_init = torch.empty(1, spec.embedding_dim).normal_(
        0.0, spec.init_std, generator=plan.generator
    )
    epochs = []
    touched = []
    for _ in range(training.epochs):
        if private:  # the noise is lazy, so the draws differ anyway: draw the epoch at once
            steps = private_epoch(plan, drawer)
            touched += [candidates.reshape(-1) for candidates, _, _ in steps]
            epochs.append(steps)
            continue
        schedule = _epoch_schedule(plan, private)
        steps = []
        for _ in range(plan.steps_per_epoch):
            positions = next(schedule)
            _, candidates, targets, weights = drawer.examples(plan, 0, positions)
            steps.append((candidates, targets, weights))
            touched.append(candidates.reshape(-1))
        next(schedule, None)
        epochs.append(steps)
    everything = torch.cat(touched)
    rows = torch.unique(everything).numpy()
    # One search for the whole round, split back into its steps.
    positions = torch.searchsorted(torch.as_tensor(rows), everything)
    sizes = [steps[k][0].numel() for steps in epochs for k in range(len(steps))]
    pieces = iter(torch.split(positions, sizes))
    local = [[(next(pieces).view(c.shape), t, w) for c, t, w in steps] for steps in epochs]
    return DrawnRound(plan, user_init, local, rows, training.lr)


def private_epoch(plan: _Plan, drawer: ClosedFormStep) -> list[tuple]:
    """One epoch of DP-SGD's examples in a few batched draws: each step's Poisson batch (every
    interaction in with probability 1/steps), an empty batch as one zero-weight padding
    example, and the negatives. The same law as the device's step-by-step draws (which the
    non-private path keeps exactly); only their order differs."""
    data, generator = plan.member.data, plan.generator
    n, steps = len(data.train_items), plan.steps_per_epoch
    chosen = torch.rand(steps, n, generator=generator) < 1 / steps
    counts = chosen.sum(1)
    empty = counts == 0
    step_of, position = chosen.nonzero(as_tuple=True)
    picked = position.numpy()  # indexed in numpy: the user's arrays may be read-only
    items = torch.from_numpy(np.asarray(data.train_items)[picked]).long()
    ratings = (
        torch.from_numpy(np.asarray(data.train_ratings, dtype=np.float32)[picked])
        if data.train_ratings is not None
        else torch.ones(len(position))
    )
    weights = torch.ones(len(position))
    if bool(empty.any()):  # padding rows, then back into step order
        pad = int(empty.sum())
        step_of = torch.cat([step_of, empty.nonzero(as_tuple=True)[0]])
        items = torch.cat([items, torch.zeros(pad, dtype=torch.long)])
        ratings = torch.cat([ratings, torch.zeros(pad)])
        weights = torch.cat([weights, torch.zeros(pad)])
        order = torch.argsort(step_of, stable=True)
        items, ratings, weights = items[order], ratings[order], weights[order]
    candidates, targets = drawer.candidates(items, ratings, generator)
    sizes = counts.clamp(min=1).tolist()
    return list(
        zip(
            torch.split(candidates, sizes),
            torch.split(targets, sizes),
            torch.split(weights, sizes),
            strict=True,
        )
    )
