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
from fedrec.privacy.spec import PrivacySpec
from fedrec.privacy.user_level import clip_scale
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.closed_form.drawn_round import DrawnRound, draw_round
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
    num_items, dim = received["item_embedding.weight"].shape
    drawer = ClosedFormStep([], [], training, None, explicit, num_items)
    prepared = [
        draw_round(plan, drawer, training, privacy.record_level, model_spec) for plan in plans
    ]
    update_sum = {name: torch.zeros(a.shape) for name, a in received.items()}
    outside_variance = torch.zeros(num_items, dtype=torch.float64)  # Σ w²s² of the rows' absentees
    weight_sum = 0.0
    updates: dict[int, dict[str, np.ndarray]] = {}
    prepared.sort(key=lambda p: -p.plan.steps_per_epoch)
    row_bytes = 4 * FLOATS_PER_ROW_DIM * (dim + 1)
    sizes = [len(p.rows) for p in prepared]
    for start, stop in chunks_within(sizes, row_bytes, chunk_size, memory_bytes):
        chunk = prepared[start:stop]
        trained = _train_chunk(received, chunk, model_spec, training, privacy, explicit)
        for row, item in enumerate(chunk):
            plan, member = item.plan, item.plan.member
            rows = torch.as_tensor(item.rows)
            compact = {
                name: trained.items[name][row, : len(rows)] - received[name][rows]
                for name in ("item_embedding.weight", "item_bias.weight")
            }
            if explicit:
                compact["global_bias.weight"] = (
                    trained.items["global_bias.weight"][row] - received["global_bias.weight"]
                )
            outside_std = item.outside_std(trained.steps[row])
            dense = None
            if keep_updates or (privacy.user_level and outside_std > 0):
                dense = dense_update(compact, rows, received, outside_std, item.plan.generator)
            new_state, epsilon = _charged_state(
                plan, trained.users, row, server_round, trained.steps[row]
            )
            finite = all(torch.isfinite(v).all() for v in compact.values())
            scale = 1.0
            if privacy.user_level:  # DP-FedAvg: the whole update bounded, as on a device
                whole = dense if dense is not None else {n: v.numpy() for n, v in compact.items()}
                scale = clip_scale(whole, privacy.user_clip_norm)
            if keep_updates:
                updates[member.key] = {
                    name: (array * scale).astype(np.float32) for name, array in dense.items()
                }
            if not finite:
                outcomes[plan.index] = MemberOutcome(
                    member.key,
                    "rejected",
                    new_state,
                    trained.losses[row],
                    trained.steps[row],
                    epsilon,
                    "the update holds NaN or inf",
                )
                continue
            weight = weights[plan.index] * scale
            if dense is not None:
                for name, array in dense.items():
                    update_sum[name] += weight * torch.from_numpy(array)
            else:
                update_sum["item_embedding.weight"].index_add_(
                    0, rows, compact["item_embedding.weight"] * weight
                )
                update_sum["item_bias.weight"].index_add_(
                    0, rows, compact["item_bias.weight"] * weight
                )
                if explicit:
                    update_sum["global_bias.weight"] += weight * compact["global_bias.weight"]
                if outside_std > 0:
                    variance = (weight * outside_std) ** 2
                    outside_variance += variance
                    outside_variance[rows] -= variance
            weight_sum += weights[plan.index]
            outcomes[plan.index] = MemberOutcome(
                member.key, "trained", new_state, trained.losses[row], trained.steps[row], epsilon
            )
    if prepared and bool((outside_variance > 0).any()):
        # Every user's noise on the rows they did not touch, over all chunks: one draw per
        # row, its variance the sum of theirs. The generator continues the first user's stream.
        generator = prepared[0].plan.generator
        std = outside_variance.clamp(min=0).sqrt().float().unsqueeze(1)
        for name in ("item_embedding.weight", "item_bias.weight"):
            noise = torch.empty(update_sum[name].shape).normal_(generator=generator)
            update_sum[name] += noise * std
    return CohortRound(
        {name: tensor.numpy() for name, tensor in update_sum.items()},
        weight_sum,
        [o for o in outcomes if o is not None],
        updates,
    )


class _Trained:
    def __init__(self, items, users, losses, steps):
        self.items, self.users, self.losses, self.steps = items, users, losses, steps


def _train_chunk(
    received: dict[str, torch.Tensor],
    chunk: list[DrawnRound],
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
) -> _Trained:
    """The chunk's local epochs on compact tables: user ``row``'s slot ``j`` is item
    ``chunk[row].rows[j]``; slots past a user's rows are padding no example refers to."""
    count = len(chunk)
    dim = received["item_embedding.weight"].shape[1]
    width = max(len(item.rows) for item in chunk)
    gather = torch.zeros(count, width, dtype=torch.long)
    for row, item in enumerate(chunk):
        gather[row, : len(item.rows)] = torch.as_tensor(item.rows)
    user_vectors = torch.empty(count, 1, dim)
    for row, item in enumerate(chunk):
        kept = item.plan.member.state.user_arrays
        user_vectors[row] = (
            torch.as_tensor(kept["user_embedding.weight"]) if kept is not None else item.user_init
        )
    params = [
        user_vectors,
        received["item_embedding.weight"][gather],
        received["item_bias.weight"][gather],
    ]
    if explicit:
        user_biases = torch.zeros(count, 1, 1)
        for row, item in enumerate(chunk):
            kept = item.plan.member.state.user_arrays
            if kept is not None and "user_bias.weight" in kept:
                user_biases[row] = torch.as_tensor(kept["user_bias.weight"])
        params += [user_biases, received["global_bias.weight"].expand(count, -1, -1).clone()]
    grads = [torch.zeros_like(p) for p in params]
    private = privacy.record_level
    step = ClosedFormStep(
        params, grads, training, privacy.max_grad_norm if private else None, explicit, width
    )
    optimizer = StackedOptimizer(params, grads, training.lr, training.optimizer)
    user_side = [0] + ([3, 4] if explicit else [])  # dense per user: noised every step
    noise_std = torch.tensor([item.plan.noise_std for item in chunk])
    divisors = torch.tensor([float(item.plan.expected_batch) if private else 0.0 for item in chunk])
    # Per compact row: the user's step count up to which its noise has been drawn.
    noised_to = torch.zeros(count * width, dtype=torch.long)
    taken = torch.zeros(count, dtype=torch.long)
    losses: list[list[float]] = [[] for _ in chunk]
    noise = (
        LazyNoise(chunk[0].plan.generator, noise_std, divisors, training.lr) if private else None
    )
    sgd = training.optimizer == "sgd"
    for epoch in range(training.epochs):
        epoch_losses: list[list[float]] = [[] for _ in chunk]
        for k in range(chunk[0].plan.steps_per_epoch):
            active = sum(item.plan.steps_per_epoch > k for item in chunk)
            steps = [chunk[row].steps[epoch][k] for row in range(active)]
            counts = torch.tensor([len(step_[0]) for step_ in steps])
            rows = torch.repeat_interleave(torch.arange(active), counts)
            candidates = torch.cat([step_[0] for step_ in steps])
            examples = [
                (
                    rows,
                    candidates,
                    torch.cat([step_[1] for step_ in steps]),
                    torch.cat([step_[2] for step_ in steps]),
                )
            ]
            flat = torch.unique(rows.unsqueeze(1) * width + candidates)  # this step's rows
            owner = flat // width
            if noise is not None:
                for index in user_side:
                    grads[index][:active] = noise.per_user(grads[index][:active])
                # The rows about to be read get the noise of the steps they sat out; this
                # step's own noise on them is drawn at their next touch or at the end.
                noise.catch_up(params, flat, owner, noised_to, taken)
                divisor = divisors[:active]
            else:
                divisor = counts.to(torch.float32)
            per_example_loss, rows = step.accumulate(examples)
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
            for row, value in enumerate((sums / sizes).tolist()):
                epoch_losses[row].append(value)
        for row in range(count):
            losses[row].append(float(np.mean(epoch_losses[row])))
    if noise is not None:  # every compact row's noise up to the user's last step
        real = torch.cat(
            [row * width + torch.arange(len(item.rows)) for row, item in enumerate(chunk)]
        )
        noise.catch_up(params, real, real // width, noised_to, taken)
    names = [*USER_SIDE[:1], *ITEM_SIDE[:2]] + ([USER_SIDE[1], ITEM_SIDE[2]] if explicit else [])
    by_name = dict(zip(names, params, strict=True))
    items = {name: by_name[name] for name in received}
    users = {name: by_name[name] for name in names if name in USER_SIDE}
    steps = taken.tolist()
    return _Trained(items, users, [float(np.mean(loss)) for loss in losses], steps)
