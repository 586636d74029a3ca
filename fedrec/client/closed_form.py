"""Closed-form DP-SGD for matrix factorization: many users' local rounds at once (the simulation's
cohort engine), or one (the embedded client).

Each user still runs *their own* round exactly as :func:`fedrec.client.trainer.train_round`
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
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional

from fedrec.client.trainer import (
    DeviceState,
    LocalData,
    LocalTrainingSpec,
    RoundResult,
    device_noise_multiplier,
    ledger_for,
    seeded_generator,
    train_round,
)
from fedrec.model.mf import ITEM_SIDE, USER_SIDE, ModelSpec
from fedrec.privacy.dp_sgd import PrivacySpec
from fedrec.privacy.ledger import PrivacyBudgetExhausted, PrivacyLedger
from fedrec.privacy.user_level import clip_update

FAST_OPTIMIZERS = ("sgd", "adam")
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the device uses
_CLIP_EPS = 1e-6  # Opacus: clipping factor = min(1, C / (norm + 1e-6))


@dataclass
class CohortMember:
    """One user of the cohort: their key (for seeds and reports), data, state and seed."""

    key: int
    data: LocalData
    state: DeviceState
    seed: int | None


@dataclass
class MemberOutcome:
    """What one user's round came to. ``status``: trained, budget_exhausted, rejected, failed."""

    key: int
    status: str
    state: DeviceState
    loss: float = float("nan")
    steps: int = 0
    epsilon: float = 0.0
    reason: str = ""


@dataclass
class CohortRound:
    """The weighted sum of the released item updates, and each user's outcome.

    ``updates`` holds each trained user's own update only when asked for (tests): at ML-1M
    scale they would not fit in memory, and the sum is all the server-side average needs.
    """

    update_sum: dict[str, np.ndarray]
    weight_sum: float
    outcomes: list[MemberOutcome]
    updates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


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
    chunk_size: int = 256,
    keep_updates: bool = False,
) -> CohortRound:
    """Every member's local round against the same received item arrays.

    ``weights`` (default 1 each) scale each released update in ``update_sum``. A user whose
    budget would be exceeded trains nothing (``budget_exhausted``); one whose update is not
    finite is ``rejected`` and left out of the sum, as the server would.
    """
    if training.optimizer not in FAST_OPTIMIZERS:
        raise ValueError(
            f"the cohort engine runs optimizer {', '.join(FAST_OPTIMIZERS)}; "
            f"got '{training.optimizer}' (use the per-user engine for it)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected >= 1")
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
    update_sum = {name: np.zeros(a.shape, dtype=np.float32) for name, a in received.items()}
    weight_sum = 0.0
    updates: dict[int, dict[str, np.ndarray]] = {}
    # Users with the same number of steps side by side: a step then works on a prefix.
    plans.sort(key=lambda plan: -plan.steps_per_epoch)
    for start in range(0, len(plans), chunk_size):
        chunk = plans[start : start + chunk_size]
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


def _check_item_arrays(received: dict[str, torch.Tensor], explicit: bool) -> None:
    expected = {"item_embedding.weight", "item_bias.weight"} | (
        {"global_bias.weight"} if explicit else set()
    )
    if set(received) != expected:
        raise ValueError(f"item arrays {sorted(received)}; expected {sorted(expected)}")
    table = received["item_embedding.weight"]
    if table.ndim != 2 or tuple(received["item_bias.weight"].shape) != (table.shape[0], 1):
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
    num_items, dim = received["item_embedding.weight"].shape
    # The parameters, in the order of MatrixFactorization.parameters() (the order in which the
    # device's optimizer draws noise), each with a leading user axis.
    user_vectors = torch.empty(count, 1, dim)
    for row, plan in enumerate(chunk):
        # The device's model draws a fresh user embedding, then loads the kept one if any.
        user_vectors[row].normal_(0.0, model_spec.init_std, generator=plan.generator)
        kept = plan.member.state.user_arrays
        if kept is not None:
            user_vectors[row] = torch.as_tensor(kept["user_embedding.weight"])
    params = [
        user_vectors,
        received["item_embedding.weight"].expand(count, -1, -1).clone(),
        received["item_bias.weight"].expand(count, -1, -1).clone(),
    ]
    if explicit:
        user_biases = torch.zeros(count, 1, 1)
        for row, plan in enumerate(chunk):
            kept = plan.member.state.user_arrays
            if kept is not None and "user_bias.weight" in kept:
                user_biases[row] = torch.as_tensor(kept["user_bias.weight"])
        params += [user_biases, received["global_bias.weight"].expand(count, -1, -1).clone()]
    grads = [torch.zeros_like(p) for p in params]
    optimizer = _StackedOptimizer(params, grads, training)
    step = _Step(
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


class _Step:
    """One DP-SGD (or plain SGD) gradient for every active user of a chunk, in closed form."""

    def __init__(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        training: LocalTrainingSpec,
        max_grad_norm: float | None,
        explicit: bool,
        num_items: int,
    ) -> None:
        self.params, self.grads = params, grads
        self.l2 = training.l2
        self.num_negatives = training.num_negatives
        self.max_grad_norm = max_grad_norm
        self.explicit = explicit
        self.num_items = num_items

    def examples(self, plan: _Plan, row: int, positions: torch.Tensor):
        """(rows, candidates [B, C], targets [B, C], weights [B]) for one user's batch; an
        empty Poisson batch becomes one zero-weight padding example, as on the device."""
        data = plan.member.data
        weights = torch.ones(len(positions))
        items = torch.from_numpy(np.asarray(data.train_items)[positions.numpy()]).long()
        ratings = (
            torch.from_numpy(np.asarray(data.train_ratings, dtype=np.float32)[positions.numpy()])
            if data.train_ratings is not None
            else torch.ones(len(positions))
        )
        if len(positions) == 0:
            items, ratings, weights = (
                torch.zeros(1, dtype=torch.long),
                torch.zeros(1),
                torch.zeros(1),
            )
        if self.explicit:
            candidates, targets = items.unsqueeze(1), ratings.unsqueeze(1)
        else:
            negatives = torch.randint(
                self.num_items, (len(items), self.num_negatives), generator=plan.generator
            )
            candidates = torch.cat([items.unsqueeze(1), negatives], dim=1)
            targets = torch.zeros(candidates.shape)
            targets[:, 0] = 1.0
        rows = torch.full((len(items),), row, dtype=torch.long)
        return rows, candidates, targets, weights

    def accumulate(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """Add each user's sum of clipped per-example gradients to their grad buffers; return
        the per-example losses and the row of each example."""
        rows = torch.cat([e[0] for e in examples])
        candidates = torch.cat([e[1] for e in examples])
        targets = torch.cat([e[2] for e in examples])
        weights = torch.cat([e[3] for e in examples])
        users, table, biases = self.params[:3]
        dim = table.shape[-1]
        p = users[rows, 0]  # [S, d]
        flat = rows.unsqueeze(1) * self.num_items + candidates  # [S, C] rows of the stacked table
        q = table.view(-1, dim)[flat]  # [S, C, d]
        b = biases.view(-1)[flat]  # [S, C]
        scores = torch.einsum("sd,scd->sc", p, q) + b
        if self.explicit:
            user_bias = self.params[3].view(-1)[rows]
            scores = scores + user_bias.unsqueeze(1) + self.params[4].view(-1)[rows].unsqueeze(1)
            per_candidate = (scores - targets).pow(2)
            d_scores = 2 * (scores - targets)
        else:
            per_candidate = functional.binary_cross_entropy_with_logits(
                scores, targets, reduction="none"
            )
            d_scores = torch.sigmoid(scores) - targets
        width = candidates.shape[1]
        penalty = p.pow(2).sum(1) + q.pow(2).sum((1, 2)) + b.pow(2).sum(1)
        if self.explicit:
            penalty = penalty + user_bias.pow(2)
        loss = (per_candidate.mean(1) + self.l2 * penalty) * weights
        a = d_scores * (weights / width).unsqueeze(1)  # d loss / d score, [S, C]
        decay = 2 * self.l2 * weights  # d (l2 · penalty) / d parameter, per unit parameter
        g_user = torch.einsum("sc,scd->sd", a, q) + decay.unsqueeze(1) * p
        g_rows = a.unsqueeze(2) * p.unsqueeze(1) + decay.view(-1, 1, 1) * q  # per occurrence
        g_bias = a + decay.unsqueeze(1) * b
        if self.explicit:
            g_user_bias = a.sum(1) + decay * user_bias
            g_global = a.sum(1)
        if self.max_grad_norm is not None:
            # Per-example norm of each parameter's gradient: an item drawn twice in one example
            # has one row whose gradient is the sum, as Opacus' embedding norm computes it.
            same = (candidates.unsqueeze(2) == candidates.unsqueeze(1)).float()
            norm_rows = (torch.bmm(g_rows, g_rows.transpose(1, 2)) * same).sum((1, 2))
            norm_bias = (g_bias.unsqueeze(2) * g_bias.unsqueeze(1) * same).sum((1, 2))
            norms = [
                g_user.pow(2).sum(1).sqrt(),
                norm_rows.clamp(min=0).sqrt(),
                norm_bias.clamp(min=0).sqrt(),
            ]
            if self.explicit:
                norms += [g_user_bias.abs(), g_global.abs()]
            total = torch.stack(norms).norm(2, dim=0)
            coeff = (self.max_grad_norm / (total + _CLIP_EPS)).clamp(max=1.0)
            g_user = g_user * coeff.unsqueeze(1)
            g_rows = g_rows * coeff.view(-1, 1, 1)
            g_bias = g_bias * coeff.unsqueeze(1)
            if self.explicit:
                g_user_bias, g_global = g_user_bias * coeff, g_global * coeff
        grad_users, grad_table, grad_biases = self.grads[:3]
        grad_users.view(-1, dim).index_add_(0, rows, g_user)
        grad_table.view(-1, dim).index_add_(0, flat.reshape(-1), g_rows.reshape(-1, dim))
        grad_biases.view(-1).index_add_(0, flat.reshape(-1), g_bias.reshape(-1))
        if self.explicit:
            self.grads[3].view(-1).index_add_(0, rows, g_user_bias)
            self.grads[4].view(-1).index_add_(0, rows, g_global)
        return loss.detach(), rows


class _StackedOptimizer:
    """torch's SGD or Adam (default betas and eps, no weight decay) for each user of a chunk,
    each user with their own step count, applied to the active prefix of the stack."""

    def __init__(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], training: LocalTrainingSpec
    ) -> None:
        self.params, self.grads = params, grads
        self.lr, self.kind = training.lr, training.optimizer
        adam = self.kind == "adam"
        self.first = [torch.zeros_like(p) for p in params] if adam else []
        self.second = [torch.zeros_like(p) for p in params] if adam else []
        self.taken = torch.zeros(params[0].shape[0], dtype=torch.float64)

    def step(self, active: int) -> None:
        if self.kind == "sgd":
            for param, grad in zip(self.params, self.grads, strict=True):
                param[:active].add_(grad[:active], alpha=-self.lr)
            return
        self.taken[:active] += 1
        if hasattr(torch, "_fused_adam_"):
            # torch.optim.Adam(fused=True)'s kernel: one pass per user's tensor, each with its
            # own step count; it agrees with the device's Adam to float rounding.
            steps = [torch.tensor(float(t)) for t in self.taken[:active].tolist()]
            for param, grad, first, second in zip(
                self.params, self.grads, self.first, self.second, strict=True
            ):
                torch._fused_adam_(
                    list(param[:active].unbind(0)),
                    list(grad[:active].unbind(0)),
                    list(first[:active].unbind(0)),
                    list(second[:active].unbind(0)),
                    [],
                    steps,
                    lr=self.lr,
                    beta1=_ADAM_BETAS[0],
                    beta2=_ADAM_BETAS[1],
                    weight_decay=0.0,
                    eps=_ADAM_EPS,
                    amsgrad=False,
                    maximize=False,
                )
            return
        self._adam_step(active)

    def _adam_step(self, active: int) -> None:
        """torch's single-tensor Adam, written out for the stack (slower; no fused kernel)."""
        beta1, beta2 = _ADAM_BETAS
        taken = self.taken[:active]
        step_size = (self.lr / (1 - beta1**taken)).float()
        correction_sqrt = ((1 - beta2**taken) ** 0.5).float()
        for param, grad, first, second in zip(
            self.params, self.grads, self.first, self.second, strict=True
        ):
            shape = (-1, *([1] * (param.ndim - 1)))
            g, m, v = grad[:active], first[:active], second[:active]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / correction_sqrt.view(shape)).add_(_ADAM_EPS)
            param[:active].sub_(m / denom * step_size.view(shape))


def train_user_round(
    item_arrays: dict[str, np.ndarray],
    data: LocalData,
    state: DeviceState,
    *,
    model_spec: ModelSpec,
    training: LocalTrainingSpec,
    privacy: PrivacySpec,
    explicit: bool,
    seed: int | None,
    server_round: int = 0,
) -> RoundResult:
    """:func:`fedrec.client.trainer.train_round`'s contract (same arguments, result, errors and
    numbers) on the closed-form engine: a one-user cohort.

    For a device this matters for memory and time, not results: no Opacus engine, hooks or
    per-sample buffers are built (peak memory of a round against a 3,706 × 64 table: ~140 MB
    beyond torch instead of ~190 MB). Optimizers the engine does not run go to ``train_round``.
    """
    if training.optimizer not in FAST_OPTIMIZERS:
        return train_round(
            item_arrays,
            data,
            state,
            model_spec=model_spec,
            training=training,
            privacy=privacy,
            explicit=explicit,
            seed=seed,
            server_round=server_round,
        )
    if len(data.train_items) == 0:
        raise ValueError("this user has no training interactions")
    result = train_cohort(
        item_arrays,
        [CohortMember(0, data, state, seed)],
        model_spec=model_spec,
        training=training,
        privacy=privacy,
        explicit=explicit,
        server_round=server_round,
        keep_updates=True,
    )
    outcome = result.outcomes[0]
    if outcome.status == "budget_exhausted":
        raise PrivacyBudgetExhausted(outcome.reason)
    if outcome.status == "failed":
        raise ValueError(outcome.reason)
    update = result.updates[0]  # also when not finite: the server refuses it, as it would
    batch_size = min(training.batch_size, len(data.train_items))
    sample_rate = (
        1 / math.ceil(len(data.train_items) / batch_size)
        if privacy.record_level
        else batch_size / len(data.train_items)
    )
    return RoundResult(
        update, outcome.state, outcome.loss, outcome.steps, sample_rate, outcome.epsilon
    )
