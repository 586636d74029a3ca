"""What happened in one round, as the server saw it: one row of ``metrics.csv``.

Counts are of users (a node that speaks for many users counts each of them), so the same
federation gives the same row on every engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RoundRecord:
    """What happened in one round, as the server saw it."""

    server_round: int
    sampled: int = 0
    accepted: int = 0
    failed: int = 0
    rejected: int = 0
    budget_exhausted: int = 0
    declined: int = 0  # users who declined the round (no consent, nothing consented to train on)
    timed_out: int = 0  # sampled nodes whose reply did not arrive within the round's timeout
    refused: int = 0  # devices that refused the server's request (bad settings or table)
    skipped: int = 0  # 1: fewer than min_replies updates were accepted; the model is unchanged
    train_loss: float = float("nan")
    evaluation: dict[str, float] = field(default_factory=dict)
    epsilon_min: float = 0.0
    epsilon_max: float = 0.0
    epsilon_median: float = 0.0
    clients_with_epsilon: int = 0
    users_at_budget: int = 0  # distinct users stopped by their budget so far in the run
    user_level_epsilon: float | None = None  # the server's user-level ε (modes user, both)
    server_view_epsilon: float | None = None  # distributed DP-ALS: ε against the server itself
    server_noise_fraction: float | None = None  # distributed DP-ALS: the variance it topped up
    seconds: float = 0.0
    secagg_clipped_values: int | None = None  # SecAgg+: values the devices clipped

    def outcome_counts(self) -> str:
        """Why updates are missing, for the round's log line: the three failure counts always,
        the devices' own refusals only when there are any (a table every device refuses stalls
        the run, and the server's log must say so, not only the devices')."""
        parts = [
            f"{self.failed} failed",
            f"{self.timed_out} timed out",
            f"{self.rejected} rejected",
        ]
        for count, words in (
            (self.refused, "refused the request (see the devices' logs)"),
            (self.declined, "declined"),
            (self.budget_exhausted, "out of budget"),
        ):
            if count:
                parts.append(f"{count} {words}")
        return ", ".join(parts)

    def row(self) -> dict[str, float]:
        flat = {k: v for k, v in self.__dict__.items() if k != "evaluation" and v is not None}
        return {**flat, **self.evaluation}


RoundCallback = Callable[[RoundRecord], None]
