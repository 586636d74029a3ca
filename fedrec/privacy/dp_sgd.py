"""DP-SGD on the device through Opacus, with the accountant's history carried across rounds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from fedrec.privacy.accounting import PrivacyStep, new_accountant
from fedrec.privacy.spec import PrivacySpec

# Ghost clipping's second backward pass triggers this on every step: the model's inputs are item
# indices, which never require gradients, so the hook firing on module outputs is exactly right.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)


@dataclass
class PrivateTraining:
    """What Opacus hands back; train with these and nothing else."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    loader: DataLoader
    engine: PrivacyEngine

    @property
    def history(self) -> list[PrivacyStep]:
        return list(self.engine.accountant.history)

    @property
    def sample_rate(self) -> float:
        """The Poisson rate the accountant charges: 1 / (batches per epoch)."""
        return float(self.loader.sample_rate)


def make_private(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    loader: DataLoader,
    spec: PrivacySpec,
    noise_multiplier: float,
    history: list[PrivacyStep],
    noise_generator: torch.Generator | None = None,
) -> PrivateTraining:
    """Wrap model, optimizer, loss and data for DP-SGD with Poisson sampling.

    The accountant starts from ``history`` so its ε covers the whole run, not this round. The
    whole local model is private (user and item side): the released item update is then a
    post-processing of the DP computation.
    """
    engine = PrivacyEngine(accountant=spec.accountant)
    engine.accountant = new_accountant(spec.accountant, history)
    wrapped = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=spec.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=spec.grad_sample_mode,
        noise_generator=noise_generator,
    )
    if spec.grad_sample_mode == "ghost":
        private_model, private_optimizer, private_criterion, private_loader = wrapped
    else:
        private_model, private_optimizer, private_loader = wrapped
        private_criterion = criterion
    return PrivateTraining(
        private_model, private_optimizer, private_criterion, private_loader, engine
    )
