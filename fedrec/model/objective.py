"""What one training example is, and its loss; shared by every kind of training.

An example is one interaction. In implicit mode it is scored together with ``num_negatives``
items drawn uniformly from the catalogue on the spot (an item the user did interact with may be
drawn, with probability about |log| / |items|; excluding them would make one example's gradient
depend on the user's other records, which the DP-SGD sensitivity argument does not allow).
Keeping the negatives inside the example means per-sample clipping bounds an interaction and
its negatives together. ``num_negatives=0`` scores the positive alone: every step only raises
the scores of the user's own items, which is useless for ordinary training but is exactly the
one-release popularity recipe (one full-batch step: the released bias update is the user's item
indicator; ``configs/experiment/ml100k_federated_private_popularity.yaml``).
"""

from __future__ import annotations

import torch
from torch import nn


class RegularizedLoss(nn.Module):
    """Per-example loss = mean over its candidates of BCE (or squared error) + l2 × its penalty.

    Takes the model's ``with_penalty`` output [B, C + 1]. Has a ``reduction`` attribute like
    torch's losses ("mean", "sum", "none" → [B]) because Opacus' ghost clipping switches it to
    "none" to get per-example losses.
    """

    def __init__(self, *, explicit: bool, l2: float, reduction: str = "mean") -> None:
        super().__init__()
        self.explicit = explicit
        self.l2 = l2
        self.reduction = reduction

    def forward(
        self, outputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``weights`` [B] (default 1) scale each example: 0 marks a padding example, whose
        gradient is exactly zero, so a step on it adds only DP noise."""
        scores, penalty = outputs[:, :-1], outputs[:, -1]
        if self.explicit:
            per_candidate = (scores - targets).pow(2)
        else:
            per_candidate = nn.functional.binary_cross_entropy_with_logits(
                scores, targets, reduction="none"
            )
        per_example = per_candidate.mean(1) + self.l2 * penalty
        if weights is not None:
            per_example = per_example * weights
        if self.reduction == "none":
            return per_example
        if self.reduction == "sum":
            return per_example.sum()
        if self.reduction == "mean":
            return per_example.mean()
        raise ValueError(f"reduction='{self.reduction}'; accepted: mean, sum, none")


class Objective:
    """Build model inputs and targets for a batch, and the loss used on them."""

    def __init__(
        self, *, explicit: bool, num_negatives: int, num_items: int, l2: float = 0.0
    ) -> None:
        if num_negatives < 0:
            raise ValueError(f"num_negatives={num_negatives}; expected >= 0")
        if l2 < 0:
            raise ValueError(f"l2={l2}; expected >= 0")
        self.explicit = explicit
        self.num_negatives = num_negatives
        self.num_items = num_items
        self.l2 = l2

    def criterion(self) -> RegularizedLoss:
        """Mean over the batch of the per-example loss (the form Opacus wraps)."""
        return RegularizedLoss(explicit=self.explicit, l2=self.l2)

    def inputs_and_targets(
        self,
        items: torch.Tensor,
        ratings: torch.Tensor,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positives [B] → candidate items [B, C] and targets [B, C]."""
        if self.explicit:
            return items.unsqueeze(1), ratings.unsqueeze(1).float()
        negatives = torch.randint(
            self.num_items, (len(items), self.num_negatives), generator=generator
        )
        candidates = torch.cat([items.unsqueeze(1), negatives], dim=1)
        targets = torch.zeros(candidates.shape, dtype=torch.float32)
        targets[:, 0] = 1.0
        return candidates, targets
