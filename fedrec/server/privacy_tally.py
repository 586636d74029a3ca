"""What the server knows of its users' record-level spending, over the whole run.

Every device reports its ε (from its own ledger) with each reply, and says so when its budget
stops it. The server keeps the latest ε per user and the set of users who have been stopped,
so that every round's record (and the run's summary) can give the distribution of ε over users
and how many of them hit their budget, not just how many replies were missing in one round.

A user is keyed by their Flower node id (one node is one user) or by ``("user", key)`` for the
users a cohort node speaks for (their keys are stable across processes; node ids are not).
"""

from __future__ import annotations

import statistics
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PrivacyTally:
    epsilon_by_client: dict[Hashable, float] = field(default_factory=dict)
    at_budget: set[Hashable] = field(default_factory=set)

    def report(self, client: Hashable, epsilon: float, *, budget_exhausted: bool = False) -> None:
        """A reply's ε (cumulative over the run, from the device's ledger)."""
        self.epsilon_by_client[client] = float(epsilon)
        if budget_exhausted:
            self.at_budget.add(client)

    def fill(self, record: Any) -> None:
        """Set a round record's ε columns and ``users_at_budget`` from everything heard so far."""
        if self.epsilon_by_client:
            spent = list(self.epsilon_by_client.values())
            record.epsilon_min = min(spent)
            record.epsilon_max = max(spent)
            record.epsilon_median = statistics.median(spent)
            record.clients_with_epsilon = len(spent)
        record.users_at_budget = len(self.at_budget)

    def to_json(self) -> dict[str, list]:
        """For the checkpoint: only cohort users' entries survive a new process (see
        :meth:`restore_json`), but every entry is written so the file says what was known."""
        return {
            "epsilon": [_tagged(key) + [value] for key, value in self.epsilon_by_client.items()],
            "at_budget": [_tagged(key) for key in self.at_budget],
        }

    def restore_json(self, data: dict[str, list]) -> None:
        """Restore what a checkpoint holds about cohort users. A per-user node is known by its
        Flower node id, which a new simulation process draws afresh: restoring those entries
        would count every such client twice, so after a resume they cover the clients heard
        from since (the ledgers themselves, in the device state, are what ε is read from)."""
        for kind, key, value in data.get("epsilon", []):
            if kind == "user":
                self.epsilon_by_client[("user", int(key))] = float(value)
        for kind, key in data.get("at_budget", []):
            if kind == "user":
                self.at_budget.add(("user", int(key)))


def _tagged(key: Hashable) -> list:
    return ["user", key[1]] if isinstance(key, tuple) else ["node", key]
