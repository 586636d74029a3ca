"""What the server knows of its users' record-level spending, over the whole run.

Every device reports its ε (from its own ledger) with each reply, and says so when its budget
stops it. The server keeps the latest ε per user and the set of users who have been stopped,
so that every round's record (and the run's summary) can give the distribution of ε over users
and how many of them hit their budget, not just how many replies were missing in one round.

A user is keyed by their index in the federation's population (:mod:`fedrec.federation.loop`),
which a node's discovery answer fixes for the whole run and across a resume.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PrivacyTally:
    epsilon_by_user: dict[int, float] = field(default_factory=dict)
    at_budget: set[int] = field(default_factory=set)

    def report(self, user: int, epsilon: float, *, budget_exhausted: bool = False) -> None:
        """A reply's ε (cumulative over the run, from the device's ledger)."""
        self.epsilon_by_user[int(user)] = float(epsilon)
        if budget_exhausted:
            self.at_budget.add(int(user))

    def fill(self, record: Any) -> None:
        """Set a round record's ε columns and ``users_at_budget`` from everything heard so far."""
        if self.epsilon_by_user:
            spent = list(self.epsilon_by_user.values())
            record.epsilon_min = min(spent)
            record.epsilon_max = max(spent)
            record.epsilon_median = statistics.median(spent)
            record.clients_with_epsilon = len(spent)
        record.users_at_budget = len(self.at_budget)

    def to_json(self) -> dict[str, list]:
        return {
            "epsilon": [["user", key, value] for key, value in self.epsilon_by_user.items()],
            "at_budget": [["user", key] for key in self.at_budget],
        }

    def restore_json(self, data: dict[str, list]) -> None:
        """Restore a checkpoint's tally. Entries of checkpoints written before users were keyed
        by population index (``node`` entries: Flower node ids, redrawn by a new process) are
        not restored; the ledgers in the device state remain the reference for those."""
        for kind, key, value in data.get("epsilon", []):
            if kind == "user":
                self.epsilon_by_user[int(key)] = float(value)
        for kind, key in data.get("at_budget", []):
            if kind == "user":
                self.at_budget.add(int(key))
