"""Matrix factorization with the user side and the item side as separate parameter groups.

In the federation the user side (``user_embedding``, and ``user_bias`` in explicit mode) stays on
the device and only the item side (``item_embedding``, ``item_bias``, ``global_bias``) is shared.
Every parameter lives in an ``nn.Embedding`` so that Opacus can compute per-sample gradients for
all of them (a bare ``nn.Parameter`` is not supported by its grad samplers).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedrec.model.spec import ITEM_SIDE, USER_SIDE, ModelSpec

__all__ = ["ITEM_SIDE", "USER_SIDE", "MatrixFactorization", "ModelSpec", "random_item_arrays"]


class MatrixFactorization(nn.Module):
    """score(u, i) = <p_u, q_i> + b_i (+ b_u + mu in explicit mode)."""

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int,
        *,
        explicit: bool = False,
        init_std: float = 0.1,
        global_mean: float = 0.0,
        generator: torch.Generator | None = None,
        init_item_side: bool = True,
    ) -> None:
        """``init_item_side=False`` leaves the item tables at zero for a caller that loads them
        next (a device receiving the server's table): no random draws are spent on them."""
        super().__init__()
        if num_users < 1 or num_items < 1 or embedding_dim < 1:
            raise ValueError("num_users, num_items and embedding_dim must be >= 1")
        self.explicit = explicit
        self.user_embedding = nn.Embedding(num_users, embedding_dim)
        self.item_embedding = nn.Embedding(num_items, embedding_dim)
        self.item_bias = nn.Embedding(num_items, 1)
        self.user_bias = nn.Embedding(num_users, 1) if explicit else None
        self.global_bias = nn.Embedding(1, 1) if explicit else None
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, init_std, generator=generator)
            if init_item_side:
                self.item_embedding.weight.normal_(0.0, init_std, generator=generator)
            else:
                self.item_embedding.weight.zero_()
            self.item_bias.weight.zero_()
            if explicit:
                self.user_bias.weight.zero_()
                self.global_bias.weight.fill_(global_mean)

    @property
    def num_items(self) -> int:
        return self.item_embedding.num_embeddings

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, *, with_penalty: bool = False
    ) -> torch.Tensor:
        """``users`` [B] and ``items`` [B, C] → scores [B, C] (logits, or ratings if explicit).

        ``with_penalty`` appends a column holding each example's squared parameter norm (its user
        vector, its items' vectors and biases). The L2 penalty is computed here, from the layers'
        outputs, so that it is part of each example's own loss: Opacus then clips the gradient of
        loss and penalty together, and the penalty only touches the rows an example uses.
        """
        user_vectors = self.user_embedding(users)  # [B, d]
        item_vectors = self.item_embedding(items)  # [B, C, d]
        item_biases = self.item_bias(items).squeeze(-1)  # [B, C]
        scores = torch.einsum("bd,bcd->bc", user_vectors, item_vectors) + item_biases
        if self.explicit:
            user_biases = self.user_bias(users)  # [B, 1]
            scores = scores + user_biases + self.global_bias(torch.zeros_like(users))
        if not with_penalty:
            return scores
        penalty = user_vectors.pow(2).sum(1) + item_vectors.pow(2).sum((1, 2))
        penalty = penalty + item_biases.pow(2).sum(1)
        if self.explicit:
            penalty = penalty + user_biases.pow(2).squeeze(1)
        return torch.cat([scores, penalty.unsqueeze(1)], dim=1)

    @torch.no_grad()
    def score_all_items(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user in ``users``: [len(users), num_items]."""
        scores = self.user_embedding(users) @ self.item_embedding.weight.T
        scores = scores + self.item_bias.weight.T
        if self.explicit:
            scores = scores + self.user_bias(users) + self.global_bias.weight
        return scores

    def item_state(self) -> dict[str, np.ndarray]:
        """The shared item side as plain arrays: what a client may send and a server holds."""
        state = self.state_dict()
        return {
            name: state[name].detach().cpu().numpy().copy() for name in ITEM_SIDE if name in state
        }

    def user_state(self) -> dict[str, np.ndarray]:
        """The private user side: never leaves the device in the federation."""
        state = self.state_dict()
        return {
            name: state[name].detach().cpu().numpy().copy() for name in USER_SIDE if name in state
        }

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Overwrite some parameters from arrays, checking names and shapes first."""
        own = self.state_dict()
        for name, value in arrays.items():
            if name not in own:
                raise KeyError(f"model has no parameter '{name}'")
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"'{name}': shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
                )
        with torch.no_grad():
            for name, value in arrays.items():
                own[name].copy_(torch.as_tensor(value))


def random_item_arrays(
    num_items: int,
    embedding_dim: int,
    *,
    init_std: float,
    seed: int,
    explicit: bool = False,
    global_mean: float = 0.0,
) -> dict[str, np.ndarray]:
    """A seeded random item side (zero biases) for a server to start from: it depends on no
    one's data, so releasing it spends no privacy."""
    model = MatrixFactorization(
        1,
        num_items,
        embedding_dim,
        explicit=explicit,
        init_std=init_std,
        global_mean=global_mean,
        generator=torch.Generator().manual_seed(seed),
    )
    return model.item_state()
