"""One user's round on a real Opacus engine: the shared item table in, an item update out.

The reference implementation of a device's round (the ``opacus`` local trainer,
:mod:`fedrec.training.trainers`): a one-user MF model, DP-SGD through Opacus with Poisson
sampling, the user's privacy ledger checked before and charged before anything is released. The
closed-form engine (:mod:`fedrec.training.closed_form`) computes the same round without Opacus;
the trainer contract tests hold the two equal. The training step itself is
``fedrec.model.training.train_epoch``, the one loop every kind of training calls.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedrec.model.mf import ITEM_SIDE, MatrixFactorization, ModelSpec
from fedrec.model.objective import Objective
from fedrec.model.spec import ITEM_EMBEDDING
from fedrec.model.training import TrainSpec, make_optimizer, train_epoch
from fedrec.privacy.dp_sgd import make_private
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.spec import PrivacySpec
from fedrec.privacy.user_level import clip_update
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.budget import device_noise_multiplier, ledger_for, seeded_generator
from fedrec.training.state import DeviceState, LocalData, RoundResult


def local_model(
    item_arrays: dict[str, np.ndarray],
    state: DeviceState,
    *,
    model_spec: ModelSpec,
    explicit: bool,
    generator: torch.Generator,
) -> MatrixFactorization:
    """A one-user model from the received item side and the kept (or a fresh) user side."""
    table = item_arrays.get(ITEM_EMBEDDING)
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


def examples_of(data: LocalData) -> TensorDataset:
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
    spec = train_spec_of(training)
    objective = Objective(
        explicit=explicit, num_negatives=spec.num_negatives, num_items=model.num_items, l2=spec.l2
    )
    optimizer = make_optimizer(model.parameters(), spec)
    dataset = examples_of(data)
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


def _merged(history: list) -> list:
    """Steps with equal consecutive (noise, rate) folded together, as Opacus' accountant does."""
    merged: list = []
    for noise, rate, steps in history:
        if merged and merged[-1][:2] == (float(noise), float(rate)):
            merged[-1] = (merged[-1][0], merged[-1][1], merged[-1][2] + int(steps))
        else:
            merged.append((float(noise), float(rate), int(steps)))
    return merged


def train_spec_of(training: LocalTrainingSpec) -> TrainSpec:
    """The model package's training spec for a device's round settings."""
    return TrainSpec(
        epochs=training.epochs,
        batch_size=training.batch_size,
        lr=training.lr,
        optimizer=training.optimizer,
        l2=training.l2,
        num_negatives=training.num_negatives,
    )
