"""``configs/faults/*.yaml``: the faults a simulation injects (played by
:mod:`fedrec.flower.faults`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FaultSpec:
    """Mirrors ``configs/faults/*.yaml``.

    ``dropout_rate``: chance that a client asked to train fails instead of replying; a share
    ``dropout_after_training`` of those fail after training (their ledger is charged: the update
    may have been computed, so its privacy is spent), the rest before. ``straggler_rate``: chance
    that a client replies ``straggler_delay_s`` late (0: the round's timeout plus one second).
    ``server_crash_round``: SIGKILL the server process as soon as that round's replies are in,
    before the round is aggregated or checkpointed (0: never); a resumed run does not repeat it.
    """

    dropout_rate: float = 0.0
    straggler_rate: float = 0.0
    seed: int = 0
    dropout_after_training: float = 0.5
    straggler_delay_s: float = 0.0
    server_crash_round: int = 0

    def __post_init__(self) -> None:
        for name in ("dropout_rate", "straggler_rate", "dropout_after_training"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"faults.{name}={getattr(self, name)}; expected 0..1")
        if self.dropout_rate + self.straggler_rate > 1.0:
            raise ValueError("faults.dropout_rate + faults.straggler_rate must be <= 1")
        if self.straggler_delay_s < 0 or self.server_crash_round < 0:
            raise ValueError("faults.straggler_delay_s and faults.server_crash_round must be >= 0")

    @property
    def injects_client_faults(self) -> bool:
        return self.dropout_rate > 0 or self.straggler_rate > 0
