"""torch's SGD and Adam for a stack of users, each with their own step count and moments."""

from __future__ import annotations

import torch

_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the device uses


class StackedOptimizer:
    """torch's SGD or Adam (default betas and eps, no weight decay) for each user of a chunk,
    each user with their own step count, applied to the active prefix of the stack."""

    def __init__(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], lr: float, kind: str
    ) -> None:
        self.params, self.grads = params, grads
        self.lr, self.kind = lr, kind
        adam = self.kind == "adam"
        self.first = [torch.zeros_like(p) for p in params] if adam else []
        self.second = [torch.zeros_like(p) for p in params] if adam else []
        self.taken = torch.zeros(params[0].shape[0], dtype=torch.float64)

    def step(self, active: int) -> None:
        if self.kind == "sgd":
            for param, grad in zip(self.params, self.grads, strict=True):
                param[:active].add_(grad[:active], alpha=-self.lr)
            return
        self.taken[:active] += 1
        if hasattr(torch, "_fused_adam_"):
            # torch.optim.Adam(fused=True)'s kernel: one pass per user's tensor, each with its
            # own step count; it agrees with the device's Adam to float rounding.
            steps = [torch.tensor(float(t)) for t in self.taken[:active].tolist()]
            for param, grad, first, second in zip(
                self.params, self.grads, self.first, self.second, strict=True
            ):
                torch._fused_adam_(
                    list(param[:active].unbind(0)),
                    list(grad[:active].unbind(0)),
                    list(first[:active].unbind(0)),
                    list(second[:active].unbind(0)),
                    [],
                    steps,
                    lr=self.lr,
                    beta1=_ADAM_BETAS[0],
                    beta2=_ADAM_BETAS[1],
                    weight_decay=0.0,
                    eps=_ADAM_EPS,
                    amsgrad=False,
                    maximize=False,
                )
            return
        self._adam_step(active)

    def _adam_step(self, active: int) -> None:
        """torch's single-tensor Adam, written out for the stack (slower; no fused kernel)."""
        beta1, beta2 = _ADAM_BETAS
        taken = self.taken[:active]
        step_size = (self.lr / (1 - beta1**taken)).float()
        correction_sqrt = ((1 - beta2**taken) ** 0.5).float()
        for param, grad, first, second in zip(
            self.params, self.grads, self.first, self.second, strict=True
        ):
            shape = (-1, *([1] * (param.ndim - 1)))
            g, m, v = grad[:active], first[:active], second[:active]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / correction_sqrt.view(shape)).add_(_ADAM_EPS)
            param[:active].sub_(m / denom * step_size.view(shape))
