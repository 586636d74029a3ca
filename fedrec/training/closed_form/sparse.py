"""The cohort engine with memory proportional to the item rows each user touches.

:func:`fedrec.training.closed_form.engine.train_cohort` stacks a full copy of the item table per
user of a chunk (plus gradients and optimizer moments): users × items × dim floats, ~14 GB for
256 users of a 17,600-item catalogue at dim 128. Here each user of a chunk holds only the rows
their round touches (their positives and the negatives they draw), and the chunk shares one
item-sized table: the sum of its users' updates.

What it computes:

- **Without DP** (SGD or Adam): the same numbers as the dense engine and the device, draw for
  draw. The round's batches and negatives are drawn first, from the user's own generator in the
  device's order; a row no example touches gets a zero gradient at every step, so SGD leaves it
  unchanged and Adam (moments zero) moves it by exactly zero.
- **With DP-SGD and plain SGD ("lazy noise")**: Opacus adds Gaussian noise to every row at every
  step, so a row's value between two touches moves by the sum of the noise it received. That sum
  is drawn once, with the summed variance, when the row is next touched or at the end of the
  round: the same distribution as per-step draws, not the same draws
  (``tests/test_sparse_cohort.py`` compares the two statistically). Rows a user never touches
  end with pure noise; their sum over the chunk's users is one Gaussian draw per row with the
  summed variance. With user-level clipping on top (``privacy=both``) or ``keep_updates``, each
  user's outside rows are drawn in full instead, one user at a time, so the clip sees the
  update's true norm.
- **DP-SGD with Adam** has no such shortcut (the moments of a noised row change at every step):
  it is refused here; the dense engine is the path for it.

The privacy ledger, the budget check, the sampling and the clipping are the dense engine's own
functions, so the accounting is the same.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.model.mf import ITEM_SIDE, USER_SIDE, ModelSpec
from fedrec.model.spec import GLOBAL_BIAS, ITEM_BIAS, ITEM_EMBEDDING, USER_BIAS, USER_EMBEDDING
from fedrec.privacy.spec import PrivacySpec
from fedrec.privacy.user_level import clip_scale
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.drawn_round import DrawnGroup, draw_group, groups_of
from fedrec.training.closed_form.engine import FAST_OPTIMIZERS, _admit, _charged_state
from fedrec.training.closed_form.lazy_noise import LazyNoise, dense_update
from fedrec.training.closed_form.memory import chunks_within
from fedrec.training.closed_form.optimizer import StackedOptimizer
from fedrec.training.closed_form.step import ClosedFormStep
from fedrec.training.state import CohortMember, CohortRound, MemberOutcome

# Floats held per touched row and dimension, at most: value, gradient and Adam's two moments,
# plus one for the row's own bookkeeping (a conservative bound for sizing chunks).
FLOATS_PER_ROW_DIM = 5


def train_cohort_sparse(
    item_arrays: dict[str, np.ndarray],
    members: list[CohortMember],
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    server_round: int = 0,
    weights: list[float] | None = None,
    chunk_size: int = 0,
    memory_bytes: int = 0,
    keep_updates: bool = False,
) -> CohortRound:
    """:func:`~fedrec.training.closed_form.engine.train_cohort`'s contract, with memory per
    chunk proportional to the rows its users touch. ``chunk_size`` 0: as many users per chunk
    as ``memory_bytes`` (0: a share of the memory available now) holds."""
    if training.optimizer not in FAST_OPTIMIZERS:
        raise ValueError(
            f"the sparse cohort engine runs optimizer {', '.join(FAST_OPTIMIZERS)}; "
            f"got '{training.optimizer}'"
        )
    if privacy.record_level and training.optimizer != "sgd":
        raise ValueError(
            "lazy noise needs plain SGD: with DP-SGD and Adam every row's moments change at "
            "every step (federation.trainer=closed_form runs that, per step)"
        )
    received, weights, outcomes, plans = _admit(
        item_arrays, members, weights, training, privacy, explicit
    )
    num_items, dim = received[ITEM_EMBEDDING].shape
    drawer = ClosedFormStep([], [], training, None, explicit, num_items)
    plans.sort(key=lambda plan: -plan.steps_per_epoch)  # a step then works on a prefix
    release = _Release(received, weights, outcomes, server_round, training.lr)
    # Each user's update on its own (a user-level clip needs its norm; keep_updates returns
    # it), or straight into the sum, with the noise of the rows' last steps drawn there.
    each = keep_updates or privacy.user_level
    row_bytes = 4 * FLOATS_PER_ROW_DIM * (dim + 1)
    for group_plans in groups_of(plans, training.epochs):
        group = draw_group(group_plans, drawer, training, privacy.record_level, model_spec)
        for start, stop in chunks_within(group.row_counts(), row_bytes, chunk_size, memory_bytes):
            trained = _train_chunk(
                received, group, start, stop, training, privacy, explicit, final_noise=each
            )
            if each:
                release.each(trained, privacy, keep_updates)
            else:
                release.together(trained)
    release.draw_outside_noise(plans[0].generator if plans else None)
    return CohortRound(
        {name: tensor.numpy() for name, tensor in release.update_sum.items()},
        release.weight_sum,
        [o for o in outcomes if o is not None],
        release.updates,
    )


class _Trained:
    """A chunk after its local epochs: the compact tables (user ``row``'s slot ``j`` is item
    ``gather[row, j]``; ``real`` lists the flat slots that are not padding, ``slot_user`` their
    users), each user's steps and loss, and how far each slot's lazy noise was drawn."""

    def __init__(self, **fields) -> None:
        self.__dict__.update(fields)


class _Release:
    """What a node releases, accumulated chunk by chunk: the weighted sum of the trained users'
    updates, their weight, each member's outcome and (``keep_updates``) each user's update."""

    def __init__(self, received, weights, outcomes, server_round: int, lr: float) -> None:
        self.received, self.weights, self.outcomes = received, weights, outcomes
        self.server_round, self.lr = server_round, lr
        self.update_sum = {name: torch.zeros(a.shape) for name, a in received.items()}
        num_items = received[ITEM_EMBEDDING].shape[0]
        # Σ w²s² over the users whose noise on a row is still to be drawn.
        self.outside_variance = torch.zeros(num_items, dtype=torch.float64)
        self.weight_sum = 0.0
        self.updates: dict[int, dict[str, np.ndarray]] = {}

    def _compact(self, trained: _Trained) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every user's update on their real slots (``trained.real`` order), and per user
        whether it is finite."""
        items = trained.gather.view(-1)[trained.real]
        compact = {}
        for name in (ITEM_EMBEDDING, ITEM_BIAS):
            table = trained.items[name]
            flat = table.view(-1, table.shape[-1])[trained.real]
            compact[name] = flat - self.received[name][items]
        count = len(trained.plans)
        bad = torch.zeros(count, dtype=torch.bool)
        for value in compact.values():
            bad.index_fill_(0, trained.slot_user[~torch.isfinite(value).all(1)], True)
        if GLOBAL_BIAS in self.received:
            value = trained.items[GLOBAL_BIAS] - self.received[GLOBAL_BIAS]
            compact[GLOBAL_BIAS] = value
            bad |= ~torch.isfinite(value.reshape(count, -1)).all(1)
        return compact, ~bad

    def _outcome(self, trained: _Trained, row: int, finite: bool) -> None:
        plan = trained.plans[row]
        new_state, epsilon = _charged_state(
            plan, trained.users, row, self.server_round, trained.steps[row]
        )
        status, reason = ("trained", "") if finite else ("rejected", "the update holds NaN or inf")
        self.outcomes[plan.index] = MemberOutcome(
            plan.member.key,
            status,
            new_state,
            trained.losses[row],
            trained.steps[row],
            epsilon,
            reason,
        )
        if finite:
            self.weight_sum += self.weights[plan.index]

    def together(self, trained: _Trained) -> None:
        """The chunk's updates straight into the sum; each slot's noise since its user's last
        touch joins the rows' outstanding variance (a sum of independent Gaussians is one)."""
        compact, finite = self._compact(trained)
        for row in range(len(trained.plans)):
            self._outcome(trained, row, bool(finite[row]))
        weight = torch.tensor([self.weights[plan.index] for plan in trained.plans]) * finite
        kept = finite[trained.slot_user]
        slots, users = trained.real[kept], trained.slot_user[kept]
        items = trained.gather.view(-1)[slots]
        for name in (ITEM_EMBEDDING, ITEM_BIAS):
            value = compact[name][kept]
            self.update_sum[name].index_add_(0, items, value * weight[users].unsqueeze(1))
        if GLOBAL_BIAS in compact:
            value = compact[GLOBAL_BIAS][finite] * weight[finite].view(-1, 1, 1)
            self.update_sum[GLOBAL_BIAS] += value.sum(0)
        if trained.noise_scales is not None:
            steps = trained.taken.to(torch.float64)
            per_step = (weight.to(torch.float64) * trained.noise_scales) ** 2
            self.outside_variance += (per_step * steps).sum()
            pending = (trained.taken[users] - trained.noised_to[slots]).to(torch.float64)
            self.outside_variance.index_add_(0, items, per_step[users] * (pending - steps[users]))

    def each(self, trained: _Trained, privacy: PrivacySpec, keep_updates: bool) -> None:
        """User by user: a user-level clip sees the whole update (the noise of the rows the user
        never touched included), and ``keep_updates`` gets each user's update."""
        compact, finite = self._compact(trained)
        ends = trained.slot_user.bincount(minlength=len(trained.plans)).cumsum(0).tolist()
        for row, plan in enumerate(trained.plans):
            self._outcome(trained, row, bool(finite[row]))
            first, last = ends[row - 1] if row else 0, ends[row]
            rows = trained.gather[row, : last - first]
            mine = {name: compact[name][first:last] for name in (ITEM_EMBEDDING, ITEM_BIAS)}
            if GLOBAL_BIAS in compact:
                mine[GLOBAL_BIAS] = compact[GLOBAL_BIAS][row]
            outside_std = 0.0
            if trained.noise_scales is not None:
                outside_std = float(trained.noise_scales[row]) * trained.steps[row] ** 0.5
            dense = None
            if keep_updates or (privacy.user_level and outside_std > 0):
                dense = dense_update(mine, rows, self.received, outside_std, plan.generator)
            scale = 1.0
            if privacy.user_level:  # DP-FedAvg: the whole update bounded, as on a device
                whole = dense if dense is not None else {n: v.numpy() for n, v in mine.items()}
                scale = clip_scale(whole, privacy.user_clip_norm)
            if keep_updates:
                self.updates[plan.member.key] = {
                    name: (array * scale).astype(np.float32) for name, array in dense.items()
                }
            if not finite[row]:
                continue
            weight = self.weights[plan.index] * scale
            if dense is not None:
                for name, array in dense.items():
                    self.update_sum[name] += weight * torch.from_numpy(array)
                continue
            for name, value in mine.items():
                if name == GLOBAL_BIAS:
                    self.update_sum[name] += weight * value
                else:
                    self.update_sum[name].index_add_(0, rows, value * weight)
            if outside_std > 0:
                variance = (weight * outside_std) ** 2
                self.outside_variance += variance
                self.outside_variance[rows] -= variance

    def draw_outside_noise(self, generator: torch.Generator | None) -> None:
        """Every user's noise still owed to the sum (rows they did not touch, and the steps
        after their last touch), over all chunks: one draw per row, its variance the sum of
        theirs. The generator continues the first user's stream."""
        if generator is None or not bool((self.outside_variance > 0).any()):
            return
        std = self.outside_variance.clamp(min=0).sqrt().float().unsqueeze(1)
        for name in (ITEM_EMBEDDING, ITEM_BIAS):
            noise = torch.empty(self.update_sum[name].shape).normal_(generator=generator)
            self.update_sum[name] += noise * std


def _train_chunk(
    received: dict[str, torch.Tensor],
    group: DrawnGroup,
    start: int,
    stop: int,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    *,
    final_noise: bool,
) -> _Trained:
    """The local epochs of users ``start:stop`` of ``group`` on compact tables: user ``row``'s
    slot ``j`` is item ``row_items[row_offsets[row] + j]``; slots past a user's rows are padding
    no example refers to. ``final_noise``: draw each slot's noise up to its user's last step
    here (else the caller owes it, see ``_Release.together``)."""
    plans = group.plans[start:stop]
    count = len(plans)
    offsets = group.row_offsets[start : stop + 1]
    counts = offsets[1:] - offsets[:-1]
    width = int(counts.max())
    slot_user = torch.repeat_interleave(torch.arange(count), counts)
    real = slot_user * width + (
        torch.arange(len(slot_user)) - (offsets[:-1] - offsets[0])[slot_user]
    )
    gather = torch.zeros(count * width, dtype=torch.long)
    gather[real] = group.row_items[int(offsets[0]) : int(offsets[-1])]
    gather = gather.view(count, width)
    user_vectors = group.user_init[start:stop].clone()
    for row, plan in enumerate(plans):
        kept = plan.member.state.user_arrays
        if kept is not None:
            user_vectors[row] = torch.as_tensor(kept[USER_EMBEDDING])
    params = [
        user_vectors,
        received[ITEM_EMBEDDING][gather],
        received[ITEM_BIAS][gather],
    ]
    if explicit:
        user_biases = torch.zeros(count, 1, 1)
        for row, plan in enumerate(plans):
            kept = plan.member.state.user_arrays
            if kept is not None and USER_BIAS in kept:
                user_biases[row] = torch.as_tensor(kept[USER_BIAS])
        params += [user_biases, received[GLOBAL_BIAS].expand(count, -1, -1).clone()]
    grads = [torch.zeros_like(p) for p in params]
    private = privacy.record_level
    step = ClosedFormStep(
        params, grads, training, privacy.max_grad_norm if private else None, explicit, width
    )
    optimizer = StackedOptimizer(params, grads, training.lr, training.optimizer)
    user_side = [0] + ([3, 4] if explicit else [])  # dense per user: noised every step
    # The chunk's examples in step order (each user's own steps stay in their order).
    first, last = int(group.ex_offsets[start]), int(group.ex_offsets[stop])
    order = torch.argsort(group.ex_step[first:last], stable=True)
    ex_user = group.ex_user[first:last][order] - start
    ex_step = group.ex_step[first:last][order]
    positions = group.positions[first:last][order]
    targets, weights = group.targets[first:last][order], group.weights[first:last][order]
    flat_slots = ex_user.unsqueeze(1) * width + positions
    total_steps = group.total_steps[start:stop]
    most = int(total_steps[0])
    bounds = [0, *torch.bincount(ex_step, minlength=most).cumsum(0).tolist()]
    # Users still training at step k: a prefix (most steps first).
    actives = torch.searchsorted(-total_steps, -torch.arange(most)).tolist()
    if private:
        divisors = torch.tensor([float(plan.expected_batch) for plan in plans])
    else:  # each step's own batch size
        batch = torch.bincount(ex_user * most + ex_step, minlength=count * most)
        batch_sizes = batch.view(count, most).to(torch.float32)
    noise_std = torch.tensor([plan.noise_std for plan in plans])
    noise = LazyNoise(plans[0].generator, noise_std, divisors, training.lr) if private else None
    # Per compact slot: the user's step count up to which its noise has been drawn.
    noised_to = torch.zeros(count * width, dtype=torch.long)
    taken = torch.zeros(count, dtype=torch.long)
    step_losses = torch.zeros(count, most)
    sgd = training.optimizer == "sgd"
    for k in range(most):
        active, lo, hi = actives[k], bounds[k], bounds[k + 1]
        rows = ex_user[lo:hi]
        flat = torch.unique(flat_slots[lo:hi])  # this step's slots
        owner = flat // width
        if noise is not None:
            for index in user_side:
                grads[index][:active] = noise.per_user(grads[index][:active])
            # The slots about to be read get the noise of the steps they sat out; this step's
            # own noise on them is drawn at their next touch or at the end.
            noise.catch_up(params, flat, owner, noised_to, taken)
            divisor = divisors[:active]
        else:
            divisor = batch_sizes[:active, k]
        per_example_loss, rows = step.accumulate(
            [(rows, positions[lo:hi], targets[lo:hi], weights[lo:hi])]
        )
        for index in user_side:
            grads[index][:active] /= divisor.view(-1, 1, 1)
        row_divisor = divisor[owner].unsqueeze(1)
        if sgd:  # only this step's rows move: a sparse step
            for index in user_side:
                params[index][:active].add_(grads[index][:active], alpha=-training.lr)
            for index in (1, 2):
                view = grads[index].view(count * width, -1)
                params[index].view(count * width, -1).index_add_(
                    0, flat, (view[flat] / row_divisor).mul_(-training.lr)
                )
                view.index_fill_(0, flat, 0.0)
        else:  # Adam (without DP): rows touched earlier keep moving on their moments
            for index in (1, 2):
                view = grads[index].view(count * width, -1)
                view[flat] = view[flat] / row_divisor
            optimizer.step(active)
            for index in (1, 2):
                grads[index].view(count * width, -1).index_fill_(0, flat, 0.0)
        for index in user_side:
            grads[index].zero_()
        taken[:active] += 1
        sums = torch.zeros(active).index_add_(0, rows, per_example_loss)
        sizes = torch.bincount(rows, minlength=active).clamp(min=1)
        step_losses[:active, k] = sums / sizes
    if noise is not None and final_noise:  # every slot's noise up to the user's last step
        noise.catch_up(params, real, slot_user, noised_to, taken)
    names = [*USER_SIDE[:1], *ITEM_SIDE[:2]] + ([USER_SIDE[1], ITEM_SIDE[2]] if explicit else [])
    by_name = dict(zip(names, params, strict=True))
    return _Trained(
        plans=plans,
        items={name: by_name[name] for name in received},
        users={name: by_name[name] for name in names if name in USER_SIDE},
        gather=gather,
        real=real,
        slot_user=slot_user,
        noised_to=noised_to,
        taken=taken,
        steps=taken.tolist(),
        losses=_round_losses(step_losses, plans, training.epochs),
        noise_scales=group.noise_scales(training.lr)[start:stop] if private else None,
    )


def _round_losses(step_losses: torch.Tensor, plans, epochs: int) -> list[float]:
    """Each user's loss as the device reports it: the mean over epochs of each epoch's mean
    step loss."""
    table = step_losses.tolist()
    losses = []
    for row, plan in enumerate(plans):
        size = plan.steps_per_epoch
        per_epoch = [float(np.mean(table[row][e * size : (e + 1) * size])) for e in range(epochs)]
        losses.append(float(np.mean(per_epoch)))
    return losses
