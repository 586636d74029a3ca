"""One DP-SGD (or plain SGD) gradient of matrix factorization for many users at once.

The per-example gradients of MF have a closed form (an example touches one user vector and its
candidate item rows), so their norms are computed directly, including repeated items inside one
example summed as Opacus' ghost clipping does for ``nn.Embedding``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional

from fedrec.protocol.settings import LocalTrainingSpec

_CLIP_EPS = 1e-6  # Opacus: clipping factor = min(1, C / (norm + 1e-6))


class ClosedFormStep:
    """One DP-SGD (or plain SGD) gradient for every active user of a chunk, in closed form."""

    def __init__(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        training: LocalTrainingSpec,
        max_grad_norm: float | None,
        explicit: bool,
        num_items: int,
    ) -> None:
        self.params, self.grads = params, grads
        self.l2 = training.l2
        self.num_negatives = training.num_negatives
        self.max_grad_norm = max_grad_norm
        self.explicit = explicit
        self.num_items = num_items

    def examples(self, plan, row: int, positions: torch.Tensor):
        """(rows, candidates [B, C], targets [B, C], weights [B]) for one user's batch; an
        empty Poisson batch becomes one zero-weight padding example, as on the device."""
        data = plan.member.data
        weights = torch.ones(len(positions))
        items = torch.from_numpy(np.asarray(data.train_items)[positions.numpy()]).long()
        ratings = (
            torch.from_numpy(np.asarray(data.train_ratings, dtype=np.float32)[positions.numpy()])
            if data.train_ratings is not None
            else torch.ones(len(positions))
        )
        if len(positions) == 0:
            items, ratings, weights = (
                torch.zeros(1, dtype=torch.long),
                torch.zeros(1),
                torch.zeros(1),
            )
        candidates, targets = self.candidates(items, ratings, plan.generator)
        rows = torch.full((len(items),), row, dtype=torch.long)
        return rows, candidates, targets, weights

    def candidates(
        self, items: torch.Tensor, ratings: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(candidates [B, C], targets [B, C]) of examples with these positive items: the item
        and its rating (explicit), or the item (target 1) and its drawn negatives (target 0)."""
        if self.explicit:
            return items.unsqueeze(1), ratings.unsqueeze(1)
        negatives = torch.randint(
            self.num_items, (len(items), self.num_negatives), generator=generator
        )
        candidates = torch.cat([items.unsqueeze(1), negatives], dim=1)
        targets = torch.zeros(candidates.shape)
        targets[:, 0] = 1.0
        return candidates, targets

    def accumulate(self, examples) -> tuple[torch.Tensor, torch.Tensor]:
        """Add each user's sum of clipped per-example gradients to their grad buffers; return
        the per-example losses and the row of each example."""
        rows = torch.cat([e[0] for e in examples])
        candidates = torch.cat([e[1] for e in examples])
        targets = torch.cat([e[2] for e in examples])
        weights = torch.cat([e[3] for e in examples])
        users, table, biases = self.params[:3]
        dim = table.shape[-1]
        p = users[rows, 0]  # [S, d]
        flat = rows.unsqueeze(1) * self.num_items + candidates  # [S, C] rows of the stacked table
        q = table.view(-1, dim)[flat]  # [S, C, d]
        b = biases.view(-1)[flat]  # [S, C]
        scores = torch.bmm(q, p.unsqueeze(2)).squeeze(2) + b
        if self.explicit:
            user_bias = self.params[3].view(-1)[rows]
            scores = scores + user_bias.unsqueeze(1) + self.params[4].view(-1)[rows].unsqueeze(1)
            per_candidate = (scores - targets).pow(2)
            d_scores = 2 * (scores - targets)
        else:
            per_candidate = functional.binary_cross_entropy_with_logits(
                scores, targets, reduction="none"
            )
            d_scores = torch.sigmoid(scores) - targets
        width = candidates.shape[1]
        decay = 2 * self.l2 * weights  # d (l2 · penalty) / d parameter, per unit parameter
        a = d_scores * (weights / width).unsqueeze(1)  # d loss / d score, [S, C]
        g_user = torch.bmm(a.unsqueeze(1), q).squeeze(1)
        if self.l2 > 0:
            penalty = p.pow(2).sum(1) + q.pow(2).sum((1, 2)) + b.pow(2).sum(1)
            if self.explicit:
                penalty = penalty + user_bias.pow(2)
            loss = (per_candidate.mean(1) + self.l2 * penalty) * weights
            g_user = g_user + decay.unsqueeze(1) * p
        else:  # (the default) no decay terms: the row gradients are multiples of p
            loss = per_candidate.mean(1) * weights
        if self.explicit:
            g_user_bias = a.sum(1) + decay * user_bias
            g_global = a.sum(1)
        g_rows = g_bias = None  # per occurrence: [S, C, d] and [S, C]
        if self.max_grad_norm is not None:
            # Per-example norm of each parameter's gradient: an item drawn twice in one example
            # has one row whose gradient is the sum, as Opacus' embedding norm computes it.
            same = (candidates.unsqueeze(2) == candidates.unsqueeze(1)).float()
            if self.l2 > 0:
                g_rows, g_bias = self._row_gradients(a, p, q, b, decay)
                square_rows = (torch.bmm(g_rows, g_rows.transpose(1, 2)) * same).sum((1, 2))
                square_bias = (g_bias.unsqueeze(2) * g_bias.unsqueeze(1) * same).sum((1, 2))
            else:  # row c's gradient is a_c·p: Σ_cc' a_c a_c' [c ≡ c'] times |p|²
                square_bias = (a.unsqueeze(2) * a.unsqueeze(1) * same).sum((1, 2))
                square_rows = p.pow(2).sum(1) * square_bias
            squares = g_user.pow(2).sum(1) + square_rows.clamp(min=0) + square_bias.clamp(min=0)
            if self.explicit:
                squares = squares + g_user_bias.pow(2) + g_global.pow(2)
            coeff = (self.max_grad_norm / (squares.sqrt() + _CLIP_EPS)).clamp(max=1.0)
            g_user = g_user * coeff.unsqueeze(1)
            if self.explicit:
                g_user_bias, g_global = g_user_bias * coeff, g_global * coeff
            if g_rows is not None:
                g_rows, g_bias = g_rows * coeff.view(-1, 1, 1), g_bias * coeff.unsqueeze(1)
            else:  # clip a, then form the rows' gradients once
                a = a * coeff.unsqueeze(1)
        if g_rows is None:
            g_rows, g_bias = self._row_gradients(a, p, q, b, decay)
        grad_users, grad_table, grad_biases = self.grads[:3]
        grad_users.view(-1, dim).index_add_(0, rows, g_user)
        grad_table.view(-1, dim).index_add_(0, flat.reshape(-1), g_rows.reshape(-1, dim))
        grad_biases.view(-1).index_add_(0, flat.reshape(-1), g_bias.reshape(-1))
        if self.explicit:
            self.grads[3].view(-1).index_add_(0, rows, g_user_bias)
            self.grads[4].view(-1).index_add_(0, rows, g_global)
        return loss.detach(), rows

    def _row_gradients(self, a, p, q, b, decay) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate row's embedding and bias gradient, per occurrence."""
        if self.l2 == 0:
            return a.unsqueeze(2) * p.unsqueeze(1), a
        return (
            a.unsqueeze(2) * p.unsqueeze(1) + decay.view(-1, 1, 1) * q,
            a + decay.unsqueeze(1) * b,
        )
