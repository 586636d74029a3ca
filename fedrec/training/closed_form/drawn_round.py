"""The local rounds of a group of users drawn before any step: the batches and negatives of every
step, and the item rows they touch, so that a chunk can hold just those rows
(:mod:`fedrec.training.closed_form.sparse`).

Everything is kept flat (one tensor per field for the whole group, examples ordered by user and
then step): the step loop then slices it instead of assembling per-user lists, which was most
of the engine's Python time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedrec.model.mf import ModelSpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.engine import _epoch_schedule, _Plan
from fedrec.training.closed_form.step import ClosedFormStep

# Bernoulli draws of DP-SGD's Poisson batches (steps × interactions per user) one group holds at
# most (4 MiB of floats, whatever the number of users; a user above it is a group alone): a
# group's examples and their row keys take ~25x that at its peak, and bigger groups were no faster.
DRAWS_PER_GROUP = 1 << 20


@dataclass
class DrawnGroup:
    """Users' rounds drawn in advance (``plans`` in the engine's order, most steps first).

    User ``u``'s touched item rows, sorted, are ``row_items[row_offsets[u]:row_offsets[u+1]]``;
    their examples are ``ex_offsets[u]:ex_offsets[u+1]`` of the example fields, in step order,
    each example's candidates given as positions in the user's rows.
    """

    plans: list[_Plan]
    user_init: torch.Tensor  # [U, 1, dim]: the device's fresh user embedding
    total_steps: torch.Tensor  # [U]: epochs × steps per epoch
    row_items: torch.Tensor
    row_offsets: torch.Tensor  # [U + 1]
    ex_user: torch.Tensor  # [E]
    ex_step: torch.Tensor  # [E]: the user's step (over all epochs)
    positions: torch.Tensor  # [E, C]
    targets: torch.Tensor  # [E, C]
    weights: torch.Tensor  # [E]: 0 for the padding example of an empty Poisson batch
    ex_offsets: torch.Tensor  # [U + 1]

    def row_counts(self) -> list[int]:
        return (self.row_offsets[1:] - self.row_offsets[:-1]).tolist()

    def noise_scales(self, lr: float) -> torch.Tensor:
        """Per user, the std one SGD step's noise moves a row by: ``lr·σC / expected_batch``
        (0 without DP); ``steps`` such steps sum to this times ``√steps``."""
        return torch.tensor(
            [
                lr * plan.noise_std / plan.expected_batch if plan.noise_std > 0 else 0.0
                for plan in self.plans
            ],
            dtype=torch.float64,
        )


def groups_of(plans: list[_Plan], epochs: int) -> list[list[_Plan]]:
    """Consecutive groups of ``plans`` whose Poisson draws fit :data:`DRAWS_PER_GROUP`."""
    groups: list[list[_Plan]] = []
    current: list[_Plan] = []
    draws = 0
    for plan in plans:
        size = epochs * plan.steps_per_epoch * len(plan.member.data.train_items)
        if current and draws + size > DRAWS_PER_GROUP:
            groups.append(current)
            current, draws = [], 0
        current.append(plan)
        draws += size
    if current:
        groups.append(current)
    return groups


def draw_group(
    plans: list[_Plan],
    drawer: ClosedFormStep,
    training: LocalTrainingSpec,
    private: bool,
    spec: ModelSpec,
) -> DrawnGroup:
    """Each user's fresh user embedding from their own generator (as the device draws it), then
    the round's examples: without DP the device's own draws, user by user and step by step (the
    non-private engine is exact); with DP-SGD the whole group's in a few batched draws."""
    user_init = torch.empty(len(plans), 1, spec.embedding_dim)
    for row, plan in enumerate(plans):
        user_init[row].normal_(0.0, spec.init_std, generator=plan.generator)
    total_steps = torch.tensor([training.epochs * plan.steps_per_epoch for plan in plans])
    if private:
        ex_user, ex_step, candidates, targets, weights = _private_examples(
            plans, drawer, training.epochs
        )
    else:
        ex_user, ex_step, candidates, targets, weights = _exact_examples(plans, drawer, training)
    # Each user's touched rows: one sort of (user, item) keys for the whole group.
    num_items = drawer.num_items
    keys = ex_user.unsqueeze(1) * num_items + candidates
    unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    bounds = torch.arange(len(plans) + 1) * num_items
    row_offsets = torch.searchsorted(unique, bounds)
    positions = inverse - row_offsets[ex_user].unsqueeze(1)
    return DrawnGroup(
        plans,
        user_init,
        total_steps,
        unique - (unique // num_items) * num_items,
        row_offsets,
        ex_user,
        ex_step,
        positions,
        targets,
        weights,
        torch.searchsorted(ex_user, torch.arange(len(plans) + 1)),
    )


def _exact_examples(plans: list[_Plan], drawer: ClosedFormStep, training: LocalTrainingSpec):
    """The device's draws in its order: per epoch the loader's draws, per step the batch and
    its negatives, from each user's own generator."""
    users, steps, candidates, targets, weights = [], [], [], [], []
    for row, plan in enumerate(plans):
        step = 0
        for _ in range(training.epochs):
            schedule = _epoch_schedule(plan, False)
            for _ in range(plan.steps_per_epoch):
                _, cands, targs, wts = drawer.examples(plan, 0, next(schedule))
                users.append(torch.full((len(cands),), row))
                steps.append(torch.full((len(cands),), step))
                candidates.append(cands)
                targets.append(targs)
                weights.append(wts)
                step += 1
            next(schedule, None)
    return (
        torch.cat(users),
        torch.cat(steps),
        torch.cat(candidates),
        torch.cat(targets),
        torch.cat(weights),
    )


def _private_examples(plans: list[_Plan], drawer: ClosedFormStep, epochs: int):
    """DP-SGD's examples for the whole group: at every step each interaction is in the user's
    batch with probability 1/steps (Poisson sampling, every epoch anew), an empty batch becomes
    one zero-weight padding example (item 0, as on the device), and the negatives are drawn.
    The same law as the device's step-by-step draws (the lazy noise already makes the draws
    differ); the stream is the group's first user's generator."""
    generator = plans[0].generator
    per_epoch = torch.tensor([plan.steps_per_epoch for plan in plans])
    total_steps = per_epoch * epochs
    sizes = torch.tensor([len(plan.member.data.train_items) for plan in plans])
    ex_user, ex_step, ex_position = [], [], []
    start = 0
    while start < len(plans):  # users with equal steps share one rate, hence one draw
        stop = start
        while stop < len(plans) and per_epoch[stop] == per_epoch[start]:
            stop += 1
        draws = total_steps[start:stop] * sizes[start:stop]  # a [steps, n] mask per user
        ends = draws.cumsum(0)
        chosen = torch.rand(int(ends[-1]), generator=generator) < 1 / int(per_epoch[start])
        chosen = chosen.nonzero().squeeze(1)
        user = torch.searchsorted(ends, chosen, right=True)
        local = chosen - (ends - draws)[user]
        n = sizes[start:stop][user]
        ex_user.append(user + start)
        ex_step.append(local // n)
        ex_position.append(local % n)
        start = stop
    ex_user, ex_step, ex_position = torch.cat(ex_user), torch.cat(ex_step), torch.cat(ex_position)
    step_base = total_steps.cumsum(0) - total_steps
    key = step_base[ex_user] + ex_step
    empty = (torch.bincount(key, minlength=int(total_steps.sum())) == 0).nonzero().squeeze(1)
    pad_user = torch.searchsorted(total_steps.cumsum(0), empty, right=True)
    items_of = torch.from_numpy(
        np.concatenate([np.asarray(plan.member.data.train_items) for plan in plans])
    ).long()
    item_base = sizes.cumsum(0) - sizes
    picked = item_base[ex_user] + ex_position
    items = torch.cat([items_of[picked], torch.zeros(len(empty), dtype=torch.long)])
    if drawer.explicit:  # (the plans checked that every user has ratings)
        ratings_of = torch.from_numpy(
            np.concatenate(
                [np.asarray(plan.member.data.train_ratings, dtype=np.float32) for plan in plans]
            )
        )
        ratings = torch.cat([ratings_of[picked], torch.zeros(len(empty))])
    else:
        ratings = torch.cat([torch.ones(len(picked)), torch.zeros(len(empty))])
    weights = torch.cat([torch.ones(len(picked)), torch.zeros(len(empty))])
    order = torch.argsort(torch.cat([key, empty]), stable=True)  # by user, then step
    candidates, targets = drawer.candidates(items[order], ratings[order], generator)
    users = torch.cat([ex_user, pad_user])[order]
    steps = torch.cat([ex_step, empty - step_base[pad_user]])[order]
    return users, steps, candidates, targets, weights[order]
