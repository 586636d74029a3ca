"""What a device's round may spend, decided before it trains, and where its randomness comes from.

Shared by both local trainers (:mod:`fedrec.training.trainers`), so that the Opacus round and the
closed-form engine solve the same σ, check the same budget and draw from the same generator.
"""

from __future__ import annotations

import torch

from fedrec.privacy.accounting import solve_noise_multiplier
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.spec import PrivacySpec
from fedrec.training.state import DeviceState


def seeded_generator(seed: int | None) -> torch.Generator:
    """The one generator a device round draws everything from (None: fresh OS entropy)."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


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
