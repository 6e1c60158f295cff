"""The two small optimisers LD3 uses, written out (exactly torch's update rules).

Kept here rather than using ``torch.optim`` because the parameters are two small vectors, the
state must round-trip through safetensors for resumable training, and importing torch.optim
pulls in the compiler stack (seconds of start-up on a CPU machine).

* :class:`RMSpropMomentum` (``torch.optim.RMSprop`` with ``momentum``, ``centered=False``):
  ``v <- a v + (1 - a) g^2``;  ``b <- m b + g / (sqrt(v) + eps)``;  ``p <- p - lr b``.
* :class:`SGD` (plain): ``p <- p - lr g``.

``train.offsets_optimizer`` picks the optimiser of the decoupled offsets: one of
:data:`OFFSET_OPTIMIZERS` (``rmsprop``: :class:`RMSpropMomentum` at ``lr_offsets``; ``sgd``:
:class:`SGD` at ``lr_offsets / NFE``, the paper's code).
"""
from __future__ import annotations

import torch

OFFSET_OPTIMIZERS = ("rmsprop", "sgd")


class RMSpropMomentum:
    def __init__(self, param: torch.Tensor, lr: float, momentum: float = 0.9, alpha: float = 0.99,
                 eps: float = 1e-8):
        self.param, self.lr, self.momentum, self.alpha, self.eps = param, float(lr), momentum, alpha, eps
        self.square_avg = torch.zeros_like(param)
        self.momentum_buffer = torch.zeros_like(param)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        self.square_avg.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
        self.momentum_buffer.mul_(self.momentum).add_(g / (self.square_avg.sqrt() + self.eps))
        self.param.add_(self.momentum_buffer, alpha=-self.lr)

    def state(self) -> dict:
        return {"square_avg": self.square_avg, "momentum_buffer": self.momentum_buffer}

    def load(self, state: dict) -> None:
        self.square_avg = state["square_avg"].to(self.param).clone()
        self.momentum_buffer = state["momentum_buffer"].to(self.param).clone()


class SGD:
    def __init__(self, param: torch.Tensor, lr: float):
        self.param, self.lr = param, float(lr)

    @torch.no_grad()
    def step(self) -> None:
        if self.param.grad is not None:
            self.param.add_(self.param.grad, alpha=-self.lr)

    def state(self) -> dict:
        return {}

    def load(self, state: dict) -> None:
        pass


def zero_grad(*params: torch.Tensor) -> None:
    for p in params:
        p.grad = None
