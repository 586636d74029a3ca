"""Closed-form DP-SGD for matrix factorization: many users' local rounds at once (the simulation's
cohort engine), or one (the embedded client).

Each user still runs *their own* round exactly as :func:`fedrec.training.opacus_round.train_round`
does on a device: their own random generator (same seed, same draws in the same order), their
own Poisson sampling, per-example clipping at their own norm bound, their own Gaussian noise on
every parameter, their own optimizer state, and their own privacy ledger, checked before and
charged before anything is released. What changes is only how the arithmetic is laid out: the
users of a chunk are stacked on a leading axis and every step is a handful of batched tensor
operations instead of one Opacus engine, one model and one optimizer per user.

Why not Opacus here: the per-example gradients of matrix factorization have a closed form (an
example touches one user vector and its candidate item rows), so their norms are computed
directly, including repeated items inside one example, exactly as Opacus' ghost clipping does
for ``nn.Embedding``. ``tests/test_cohort.py`` checks the result against ``train_round`` (real
Opacus) user by user, to float tolerance, so the two stay the same computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.model.mf import ITEM_SIDE, USER_SIDE, ModelSpec
from fedrec.model.spec import GLOBAL_BIAS, ITEM_BIAS, ITEM_EMBEDDING, USER_BIAS, USER_EMBEDDING
from fedrec.privacy.ledger import PrivacyBudgetExhausted, PrivacyLedger
from fedrec.privacy.spec import PrivacySpec
from fedrec.privacy.user_level import clip_update
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.budget import device_noise_multiplier, ledger_for, seeded_generator
from fedrec.training.closed_form.memory import chunks_within
from fedrec.training.closed_form.optimizer import StackedOptimizer
from fedrec.training.closed_form.step import ClosedFormStep
from fedrec.training.state import CohortMember, CohortRound, DeviceState, MemberOutcome

FAST_OPTIMIZERS = ("sgd", "adam")


@dataclass
class _Plan:
    """One user's schedule for the round, fixed before any step (as on the device)."""

    index: int  # position in the caller's member list
    member: CohortMember
    generator: torch.Generator
    batch_size: int
    steps_per_epoch: int
    noise_std: float = 0.0  # σ·C; 0 without DP
    expected_batch: int = 0  # Opacus' divisor: int(n / steps_per_epoch)
    noise_multiplier: float = 0.0
    ledger: PrivacyLedger | None = None


def train_cohort(
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
    keep_updates: bool = False,
) -> CohortRound:
    """Every member's local round against the same received item arrays, ``chunk_size`` users
    stacked at a time (0: as many as a share of the available memory holds).

    ``weights`` (default 1 each) scale each released update in ``update_sum``. A user whose
    budget would be exceeded trains nothing (``budget_exhausted``); one whose update is not
    finite is ``rejected`` and left out of the sum, as the server would.
    """
    if training.optimizer not in FAST_OPTIMIZERS:
        raise ValueError(
            f"the cohort engine runs optimizer {', '.join(FAST_OPTIMIZERS)}; "
            f"got '{training.optimizer}' (use the per-user engine for it)"
        )
    if chunk_size < 0:
        raise ValueError(f"chunk_size={chunk_size}; expected >= 0 (0: from the memory available)")
    received, weights, outcomes, plans = _admit(
        item_arrays, members, weights, training, privacy, explicit
    )
    update_sum = {name: np.zeros(a.shape, dtype=np.float32) for name, a in received.items()}
    weight_sum = 0.0
    updates: dict[int, dict[str, np.ndarray]] = {}
    # Users with the same number of steps side by side: a step then works on a prefix.
    plans.sort(key=lambda plan: -plan.steps_per_epoch)
    num_items, dim = received[ITEM_EMBEDDING].shape
    # Per user the whole table: values and gradients, and Adam's two moments.
    row_bytes = 4 * (dim + 1) * (4 if training.optimizer == "adam" else 2)
    for start, stop in chunks_within([num_items] * len(plans), row_bytes, chunk_size):
        chunk = plans[start:stop]
        new_items, user_arrays, losses, steps = _train_chunk(
            received, chunk, model_spec, training, privacy, explicit
        )
        for row, plan in enumerate(chunk):
            member = plan.member
            update = {name: (new_items[name][row] - received[name]).numpy() for name in received}
            if privacy.user_level:  # DP-FedAvg: each user's whole update bounded, as on a device
                update = clip_update(update, privacy.user_clip_norm)
            new_state, epsilon = _charged_state(plan, user_arrays, row, server_round, steps[row])
            if keep_updates:
                updates[member.key] = update
            if not all(np.isfinite(array).all() for array in update.values()):
                # Nothing from this round leaves the user, but the ledger is charged: the noisy
                # computation ran, so the spend is real (the device saves its state likewise).
                outcomes[plan.index] = MemberOutcome(
                    member.key,
                    "rejected",
                    new_state,
                    losses[row],
                    steps[row],
                    epsilon,
                    "the update holds NaN or inf",
                )
                continue
            weight = weights[plan.index]
            for name, array in update.items():
                update_sum[name] += weight * array
            weight_sum += weight
            outcomes[plan.index] = MemberOutcome(
                member.key, "trained", new_state, losses[row], steps[row], epsilon
            )
    return CohortRound(update_sum, weight_sum, [o for o in outcomes if o is not None], updates)


def _admit(
    item_arrays: dict[str, np.ndarray],
    members: list[CohortMember],
    weights: list[float] | None,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
) -> tuple[dict[str, torch.Tensor], list[float], list[MemberOutcome | None], list[_Plan]]:
    """What both cohort engines start from: the checked item arrays as tensors, one weight per
    member, and each member's plan, or (in its place in ``outcomes``) why they do not train
    (``budget_exhausted``, ``failed``)."""
    weights = [1.0] * len(members) if weights is None else list(weights)
    if len(weights) != len(members):
        raise ValueError(f"{len(weights)} weights for {len(members)} members")
    received = {
        name: torch.as_tensor(np.asarray(a), dtype=torch.float32) for name, a in item_arrays.items()
    }
    _check_item_arrays(received, explicit)
    outcomes: list[MemberOutcome | None] = [None] * len(members)
    plans: list[_Plan] = []
    for index, member in enumerate(members):
        try:
            plans.append(_plan(index, member, training, privacy, explicit))
        except PrivacyBudgetExhausted as err:
            spent = member.state.ledger.epsilon if member.state.ledger else 0.0
            outcomes[index] = MemberOutcome(
                member.key, "budget_exhausted", member.state, epsilon=spent, reason=str(err)
            )
        except ValueError as err:
            outcomes[index] = MemberOutcome(member.key, "failed", member.state, reason=str(err))
    return received, weights, outcomes, plans


def _check_item_arrays(received: dict[str, torch.Tensor], explicit: bool) -> None:
    expected = {ITEM_EMBEDDING, ITEM_BIAS} | ({GLOBAL_BIAS} if explicit else set())
    if set(received) != expected:
        raise ValueError(f"item arrays {sorted(received)}; expected {sorted(expected)}")
    table = received[ITEM_EMBEDDING]
    if table.ndim != 2 or tuple(received[ITEM_BIAS].shape) != (table.shape[0], 1):
        raise ValueError("item arrays: expected a [items, dim] table and [items, 1] biases")


def _plan(
    index: int,
    member: CohortMember,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
) -> _Plan:
    """The same checks, schedule and budget test as ``train_round``, in the same order."""
    data = member.data
    n = len(data.train_items)
    if n == 0:
        raise ValueError("this user has no training interactions")
    if explicit and data.train_ratings is None:
        raise ValueError("explicit training needs the user's ratings")
    batch_size = min(training.batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    plan = _Plan(index, member, seeded_generator(member.seed), batch_size, steps_per_epoch)
    if privacy.record_level:
        ledger = ledger_for(member.state, privacy)
        noise_multiplier = device_noise_multiplier(privacy, steps_per_epoch, training.epochs)
        ledger.check_budget(
            privacy.target_epsilon,
            noise_multiplier,
            1 / steps_per_epoch,
            training.epochs * steps_per_epoch,
        )
        plan.ledger = ledger
        plan.noise_multiplier = noise_multiplier
        plan.noise_std = noise_multiplier * privacy.max_grad_norm
        plan.expected_batch = int(n * (1 / steps_per_epoch))
    return plan


def _charged_state(
    plan: _Plan, user_arrays: dict[str, torch.Tensor], row: int, server_round: int, steps: int
) -> tuple[DeviceState, float]:
    state = plan.member.state
    ledger, epsilon = state.ledger, 0.0
    if plan.ledger is not None:
        ledger = PrivacyLedger(plan.ledger.accountant, plan.ledger.delta, list(plan.ledger.entries))
        epsilon = ledger.charge(
            server_round, plan.noise_multiplier, 1 / plan.steps_per_epoch, steps
        ).epsilon
    arrays = {name: tensor[row].numpy().copy() for name, tensor in user_arrays.items()}
    return DeviceState(arrays, ledger, state.rounds_trained + 1), epsilon


def _train_chunk(
    received: dict[str, torch.Tensor],
    chunk: list[_Plan],
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float], list[int]]:
    """Local epochs for the users of ``chunk`` (sorted by steps per epoch, descending)."""
    count = len(chunk)
    num_items, dim = received[ITEM_EMBEDDING].shape
    # The parameters, in the order of MatrixFactorization.parameters() (the order in which the
    # device's optimizer draws noise), each with a leading user axis.
    user_vectors = torch.empty(count, 1, dim)
    for row, plan in enumerate(chunk):
        # The device's model draws a fresh user embedding, then loads the kept one if any.
        user_vectors[row].normal_(0.0, model_spec.init_std, generator=plan.generator)
        kept = plan.member.state.user_arrays
        if kept is not None:
            user_vectors[row] = torch.as_tensor(kept[USER_EMBEDDING])
    params = [
        user_vectors,
        received[ITEM_EMBEDDING].expand(count, -1, -1).clone(),
        received[ITEM_BIAS].expand(count, -1, -1).clone(),
    ]
    if explicit:
        user_biases = torch.zeros(count, 1, 1)
        for row, plan in enumerate(chunk):
            kept = plan.member.state.user_arrays
            if kept is not None and USER_BIAS in kept:
                user_biases[row] = torch.as_tensor(kept[USER_BIAS])
        params += [user_biases, received[GLOBAL_BIAS].expand(count, -1, -1).clone()]
    grads = [torch.zeros_like(p) for p in params]
    optimizer = StackedOptimizer(params, grads, training.lr, training.optimizer)
    step = ClosedFormStep(
        params,
        grads,
        training,
        privacy.max_grad_norm if privacy.record_level else None,
        explicit,
        num_items,
    )
    private = privacy.record_level
    losses = [[] for _ in chunk]
    steps = [0] * count
    for _ in range(training.epochs):
        epoch_losses = [[] for _ in chunk]
        schedules = [_epoch_schedule(plan, private) for plan in chunk]
        for k in range(chunk[0].steps_per_epoch):
            active = sum(plan.steps_per_epoch > k for plan in chunk)
            batch = [next(schedules[row]) for row in range(active)]
            # Draws in the device's order: the batch, its negatives, then the noise.
            examples = [
                step.examples(plan, row, positions)
                for row, (plan, positions) in enumerate(zip(chunk, batch, strict=False))
            ]
            for row, plan in enumerate(chunk[:active]):
                for grad in grads:  # the noise (Opacus draws none when σ·C = 0), or zero
                    if private and plan.noise_std > 0:
                        grad[row].normal_(0.0, plan.noise_std, generator=plan.generator)
                    else:
                        grad[row].zero_()
            per_example_loss, rows = step.accumulate(examples)
            divisor = torch.tensor(
                [
                    float(plan.expected_batch if private else len(batch[row]))
                    for row, plan in enumerate(chunk[:active])
                ]
            )
            for grad in grads:
                grad[:active] /= divisor.view(-1, *([1] * (grad.ndim - 1)))
            optimizer.step(active)
            sums = torch.zeros(active).index_add_(0, rows, per_example_loss)
            sizes = torch.bincount(rows, minlength=active).clamp(min=1)
            for row, value in enumerate((sums / sizes).tolist()):
                epoch_losses[row].append(value)
                steps[row] += 1
        for row in range(count):
            next(schedules[row], None)  # the loader's look past the last batch (may draw)
            losses[row].append(float(np.mean(epoch_losses[row])))
    names = [*USER_SIDE[:1], *ITEM_SIDE[:2]] + ([USER_SIDE[1], ITEM_SIDE[2]] if explicit else [])
    by_name = dict(zip(names, params, strict=True))
    new_items = {name: by_name[name] for name in received}
    user_arrays = {name: by_name[name] for name in names if name in USER_SIDE}
    return new_items, user_arrays, [float(np.mean(loss)) for loss in losses], steps


def _epoch_schedule(plan: _Plan, private: bool):
    """Yield the example positions of each step of one epoch, drawing from the user's generator
    exactly when the device's DataLoader does (its base seed, then Poisson masks or a shuffle).
    """
    generator, n = plan.generator, len(plan.member.data.train_items)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the loader's base seed
    if private:
        rate = 1 / plan.steps_per_epoch
        for _ in range(plan.steps_per_epoch):
            mask = torch.rand(n, generator=generator) < rate
            yield mask.nonzero(as_tuple=False).reshape(-1)
        return
    order = torch.randperm(n, generator=generator)
    size = plan.batch_size
    for k in range(plan.steps_per_epoch):
        last = k == plan.steps_per_epoch - 1
        if last and n % size:
            torch.randperm(n, generator=generator)  # the sampler's trailing draw, before it
        yield order[k * size : (k + 1) * size]
    if n % size == 0:
        torch.randperm(n, generator=generator)  # drawn when the loader looks past the end
