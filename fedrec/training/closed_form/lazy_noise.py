"""DP-SGD's Gaussian noise drawn lazily on the item rows of the sparse cohort engine
(:mod:`fedrec.training.closed_form.sparse`): a row's noise from the steps no example touched it
is drawn at once, with the summed variance, when the row is next read or at the end."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.model.spec import GLOBAL_BIAS, ITEM_BIAS, ITEM_EMBEDDING


class LazyNoise:
    """DP-SGD's Gaussian noise for a chunk, drawn lazily on the compact item rows."""

    def __init__(
        self,
        generator: torch.Generator,
        noise_std: torch.Tensor,
        divisors: torch.Tensor,
        lr: float,
    ) -> None:
        self.generator, self.noise_std, self.divisors, self.lr = generator, noise_std, divisors, lr

    def per_user(self, like: torch.Tensor) -> torch.Tensor:
        """This step's noise on a dense per-user parameter (its first axis the active users)."""
        draw = torch.empty(like.shape).normal_(generator=self.generator)
        return draw * self.noise_std[: like.shape[0]].view(-1, *([1] * (like.ndim - 1)))

    def catch_up(
        self,
        params: list[torch.Tensor],
        flat: torch.Tensor,
        owner: torch.Tensor,
        noised_to: torch.Tensor,
        taken: torch.Tensor,
    ) -> None:
        """Move compact rows ``flat`` (of users ``owner``) by the noise of the steps since it was
        last drawn: ``pending`` SGD steps' noise sums to ``-lr/B·N(0, pending·σ²C²)``."""
        pending = (taken[owner] - noised_to[flat]).to(torch.float32)
        scale = (self.lr * self.noise_std[owner] / self.divisors[owner] * pending.sqrt()).unsqueeze(
            1
        )
        for index in (1, 2):
            view = params[index].view(noised_to.shape[0], -1)
            draw = torch.empty(len(flat), view.shape[1]).normal_(generator=self.generator)
            view.index_add_(0, flat, draw.mul_(-scale))  # (index_add_'s alpha is 3x slower)
        noised_to[flat] = taken[owner]


def dense_update(
    compact: dict[str, torch.Tensor],
    rows: torch.Tensor,
    received: dict[str, torch.Tensor],
    outside_std: float,
    generator: torch.Generator,
) -> dict[str, np.ndarray]:
    """One user's whole update: their compact rows, and on every other row the noise it
    accumulated (``outside_std`` per entry; zero without DP)."""
    dense = {}
    for name in (ITEM_EMBEDDING, ITEM_BIAS):
        full = torch.zeros(received[name].shape)
        if outside_std > 0:
            full.normal_(0.0, outside_std, generator=generator)
        full[rows] = compact[name]
        dense[name] = full.numpy()
    if GLOBAL_BIAS in compact:
        dense[GLOBAL_BIAS] = compact[GLOBAL_BIAS].numpy()
    return dense
