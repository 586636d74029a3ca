"""The on-device trainer: one user's data, the shared item table in, an item update out.

Nothing here knows about Flower. The simulation's ClientApp, the deployment ClientApp and the
embeddable client all call :func:`train_round` and :func:`evaluate_user`, so there is one
training loop (``fedrec.model.training.train_epoch``) behind all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedrec.eval.metrics import ranking_metrics_for_user, rating_errors_for_user
from fedrec.model.mf import ITEM_SIDE, USER_SIDE, MatrixFactorization, ModelSpec
from fedrec.model.objective import Objective
from fedrec.model.training import OPTIMIZERS, TrainSpec, make_optimizer, train_epoch
from fedrec.privacy.accounting import solve_noise_multiplier
from fedrec.privacy.dp_sgd import PrivacySpec, make_private
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.user_level import clip_update


@dataclass
class LocalTrainingSpec:
    """How a device trains in one round; sent by the server, checked by the device."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    l2: float = 0.0
    num_negatives: int = 4

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer='{self.optimizer}'; accepted: {', '.join(OPTIMIZERS)}")
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs={self.epochs}; expected 1..100")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch_size={self.batch_size}; expected 1..100000")
        if not 0 < self.lr <= 10:
            raise ValueError(f"lr={self.lr}; expected 0 < lr <= 10")
        if self.l2 < 0 or self.num_negatives < 0:
            raise ValueError("l2 and num_negatives must be >= 0")

    def as_train_spec(self) -> TrainSpec:
        return TrainSpec(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            l2=self.l2,
            num_negatives=self.num_negatives,
        )


@dataclass
class LocalData:
    """One user's split: what lives on their device. Item ids index the shared table."""

    num_items: int
    train_items: np.ndarray
    train_ratings: np.ndarray | None = None
    test_items: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    test_ratings: np.ndarray | None = None
    negatives: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("train_items", "test_items"):
            items = getattr(self, name)
            if len(items) and (items.min() < 0 or items.max() >= self.num_items):
                raise ValueError(f"{name} holds ids outside [0, {self.num_items})")


@dataclass
class DeviceState:
    """What a device keeps between rounds: never sent anywhere."""

    user_arrays: dict[str, np.ndarray] | None = None
    ledger: PrivacyLedger | None = None  # created by the first DP round
    rounds_trained: int = 0


@dataclass
class RoundResult:
    item_update: dict[str, np.ndarray]  # new item-side arrays minus the received ones
    state: DeviceState
    loss: float
    steps: int
    sample_rate: float
    epsilon: float  # over the whole run so far, at privacy.delta; 0 without DP


def seeded_generator(seed: int | None) -> torch.Generator:
    """The one generator a device round draws everything from (None: fresh OS entropy)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def local_model(
    item_arrays: dict[str, np.ndarray],
    state: DeviceState,
    *,
    model_spec: ModelSpec,
    explicit: bool,
    generator: torch.Generator,
) -> MatrixFactorization:
    """A one-user model from the received item side and the kept (or a fresh) user side."""
    table = item_arrays.get("item_embedding.weight")
    if table is None or table.ndim != 2:
        raise ValueError("the item arrays hold no 2-D 'item_embedding.weight'")
    model = MatrixFactorization(
        1,
        table.shape[0],
        table.shape[1],
        explicit=explicit,
        init_std=model_spec.init_std,
        generator=generator,
        init_item_side=False,
    )
    expected = {name for name in ITEM_SIDE if name in model.state_dict()}
    if set(item_arrays) != expected:
        raise ValueError(f"item arrays {sorted(item_arrays)}; expected {sorted(expected)}")
    model.load_arrays(item_arrays)
    if state.user_arrays is not None:
        model.load_arrays(state.user_arrays)
    return model


def _examples(data: LocalData) -> TensorDataset:
    count = len(data.train_items)
    ratings = data.train_ratings if data.train_ratings is not None else np.ones(count)
    return TensorDataset(
        torch.zeros(count, dtype=torch.long),
        torch.tensor(data.train_items, dtype=torch.long),  # copies: inputs may be read-only
        torch.tensor(ratings, dtype=torch.float32),
    )


def train_round(
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
    """Local epochs of (DP-)SGD on the whole local model; returns the item-side change.

    With record-level privacy (modes ``record``, ``both``) the round runs on Opacus with Poisson
    sampling (expected batch ``min(batch_size, n)``) and is charged to the user's
    :class:`PrivacyLedger`:
    - before training, a round that would take ε past ``privacy.target_epsilon`` raises
      :class:`PrivacyBudgetExhausted` (nothing is trained or released);
    - the accountant continues from the ledger, so ε covers the whole run;
    - the round is charged, and ε computed, *before* the update is returned: if ε cannot be
      computed this raises and nothing is released (fail closed).

    With user-level privacy (modes ``user``, ``both``) the returned update is clipped to
    ``privacy.user_clip_norm`` (the server adds the noise: :mod:`fedrec.privacy.user_level`).
    """
    if len(data.train_items) == 0:
        raise ValueError("this user has no training interactions")
    if explicit and data.train_ratings is None:
        raise ValueError("explicit training needs the user's ratings")
    generator = seeded_generator(seed)
    model = local_model(
        item_arrays, state, model_spec=model_spec, explicit=explicit, generator=generator
    )
    spec = training.as_train_spec()
    objective = Objective(
        explicit=explicit, num_negatives=spec.num_negatives, num_items=model.num_items, l2=spec.l2
    )
    optimizer = make_optimizer(model.parameters(), spec)
    dataset = _examples(data)
    batch_size = min(spec.batch_size, len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator)
    criterion: torch.nn.Module = objective.criterion()
    trained: torch.nn.Module = model
    ledger = state.ledger
    sample_rate = batch_size / len(dataset)
    private = None
    if privacy.record_level:
        ledger = ledger_for(state, privacy)
        batches = math.ceil(len(dataset) / batch_size)  # Opacus: rate = 1 / batches per epoch
        noise_multiplier = device_noise_multiplier(privacy, batches, spec.epochs)
        ledger.check_budget(
            privacy.target_epsilon, noise_multiplier, 1 / batches, spec.epochs * batches
        )
        private = make_private(
            model=model,
            optimizer=optimizer,
            criterion=criterion,
            loader=loader,
            spec=privacy,
            noise_multiplier=noise_multiplier,
            history=ledger.history(),
            noise_generator=generator,
        )
        trained, optimizer, criterion, loader = (
            private.model,
            private.optimizer,
            private.criterion,
            private.loader,
        )
        sample_rate = private.sample_rate
    losses, steps = [], 0
    for _ in range(spec.epochs):
        loss, epoch_steps = train_epoch(trained, optimizer, loader, objective, criterion, generator)
        losses.append(loss)
        steps += epoch_steps
    epsilon = 0.0
    if private is not None:
        # Charge a copy: the state passed in stays as it was if anything below raises.
        ledger = PrivacyLedger(ledger.accountant, ledger.delta, list(ledger.entries))
        epsilon = ledger.charge(server_round, noise_multiplier, sample_rate, steps).epsilon
        if _merged(ledger.history()) != _merged(private.history):
            raise RuntimeError("the ledger and Opacus' accountant disagree; nothing is released")
    new_items = model.item_state()
    update = {name: new_items[name] - np.asarray(item_arrays[name]) for name in new_items}
    if privacy.user_level:
        # DP-FedAvg: the whole update is bounded here, so nothing unclipped leaves the device.
        update = clip_update(update, privacy.user_clip_norm)
    new_state = DeviceState(model.user_state(), ledger, state.rounds_trained + 1)
    return RoundResult(update, new_state, float(np.mean(losses)), steps, sample_rate, epsilon)


def device_noise_multiplier(privacy: PrivacySpec, batches: int, epochs: int) -> float:
    """The configured σ, or the one this device solves for its own sampling rate (1 / batches)
    so that ``planned_rounds`` rounds of ``epochs`` stay within ``target_epsilon``. Small logs
    sample at a higher rate and so get more noise: per-user noise, every user within budget."""
    if not privacy.solve_noise_multiplier:
        return privacy.noise_multiplier
    if privacy.planned_rounds < 1:
        raise ValueError("privacy.solve_noise_multiplier needs privacy.planned_rounds >= 1")
    return solve_noise_multiplier(
        privacy.target_epsilon,
        privacy.delta,
        1 / batches,
        privacy.planned_rounds * epochs * batches,
        privacy.accountant,
    )


def ledger_for(state: DeviceState, privacy: PrivacySpec) -> PrivacyLedger:
    """The user's ledger; a change of δ or accountant mid-run is refused, as it would make the
    ledger's ε incomparable across rounds."""
    if state.ledger is None:
        return PrivacyLedger(privacy.accountant, privacy.delta)
    if (state.ledger.accountant, state.ledger.delta) != (privacy.accountant, privacy.delta):
        raise ValueError(
            f"privacy settings changed mid-run: the ledger uses {state.ledger.accountant} at "
            f"δ={state.ledger.delta:g}, this round asks for {privacy.accountant} at "
            f"δ={privacy.delta:g}"
        )
    return state.ledger


def _merged(history: list) -> list:
    """Steps with equal consecutive (noise, rate) folded together, as Opacus' accountant does."""
    merged: list = []
    for noise, rate, steps in history:
        if merged and merged[-1][:2] == (float(noise), float(rate)):
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + int(steps))
        else:
            merged.append((float(noise), float(rate), int(steps)))
    return merged


@dataclass
class LocalEvalSpec:
    """How a device scores itself. ``refit_epochs``: see :func:`evaluate_user`."""

    full_metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@20", "hr@10"])
    sampled_metrics: list[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])
    rating_metrics: bool = False
    refit_epochs: int = 0
    refit_lr: float = 0.05


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
        loader = DataLoader(_examples(data), batch_size=spec.batch_size)
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
