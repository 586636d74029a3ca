"""A device's privacy ledger: what each round cost, and the ε spent so far.

Opacus' accountant merges consecutive steps with equal noise and rate, which loses the rounds;
the ledger keeps one entry per round (the unit a user and an auditor think in) and derives the
accountant's history from it. ε is always recomputed from the whole ledger, never summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class PrivacyBudgetExhausted(RuntimeError):
    """Training this round would take the user's ε past their budget: the device sits it out."""


@dataclass(frozen=True)
class LedgerEntry:
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float  # cumulative, after this round, at the ledger's delta


@dataclass
class PrivacyLedger:
    accountant: str = "rdp"
    delta: float = 1e-5
    entries: list[LedgerEntry] = field(default_factory=list)

    @property
    def epsilon(self) -> float:
        return self.entries[-1].epsilon if self.entries else 0.0

    def history(self) -> list[tuple[float, float, int]]:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.entries]

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε if a round with these parameters were charged now (nothing is recorded)."""
        from fedrec.privacy.accounting import epsilon_spent  # Opacus: only when ε is computed

        return epsilon_spent(
            [*self.history(), (noise_multiplier, sample_rate, steps)],
            delta=self.delta,
            accountant=self.accountant,
        )

    def check_budget(
        self, target_epsilon: float | None, noise_multiplier: float, sample_rate: float, steps: int
    ) -> None:
        """Raise :class:`PrivacyBudgetExhausted` if the round would exceed ``target_epsilon``."""
        if target_epsilon is None or math.isinf(target_epsilon):
            return
        after = self.epsilon_after(noise_multiplier, sample_rate, steps)
        if after > target_epsilon:
            raise PrivacyBudgetExhausted(
                f"this round would bring ε from {self.epsilon:.3g} to {after:.3g}, past the "
                f"budget of {target_epsilon:.3g} (δ={self.delta:g})"
            )

    def charge(
        self, server_round: int, noise_multiplier: float, sample_rate: float, steps: int
    ) -> LedgerEntry:
        entry = LedgerEntry(
            server_round,
            float(noise_multiplier),
            float(sample_rate),
            int(steps),
            self.epsilon_after(noise_multiplier, sample_rate, steps),
        )
        self.entries.append(entry)
        return entry

    def to_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.accountant,
            "delta": self.delta,
            "entries": [dict(vars(e)) for e in self.entries],  # (asdict: 10x slower)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        return cls(
            data["accountant"],
            float(data["delta"]),
            [LedgerEntry(**e) for e in data.get("entries", [])],
        )
