"""The small optimisers of the trainer, written out (exactly torch's update rules).

Kept here rather than using ``torch.optim`` because the parameters are a few small tensors, the
state must round-trip through safetensors for resumable training, and importing torch.optim
pulls in the compiler stack (seconds of start-up on a CPU machine).

* :class:`RMSpropMomentum` (``torch.optim.RMSprop`` with ``momentum``, ``centered=False``):
  ``v <- a v + (1 - a) g^2``;  ``b <- m b + g / (sqrt(v) + eps)``;  ``p <- p - lr b``.
* :class:`SGD` (plain): ``p <- p - lr g``.
* :class:`Adam` (``torch.optim.Adam``): ``m <- b1 m + (1 - b1) g``; ``v <- b2 v + (1 - b2) g^2``;
  ``p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

``train.offsets_optimizer`` picks the optimiser of the decoupled offsets: one of
:data:`OFFSET_OPTIMIZERS` (``rmsprop``: :class:`RMSpropMomentum` at ``lr_offsets``; ``sgd``:
:class:`SGD` at ``lr_offsets / NFE``, the paper's code); ``train.coefficients_optimizer`` that of the
learned coefficient corrections: one of :data:`COEFFICIENT_OPTIMIZERS` (``rmsprop``: :class:`RMSpropMomentum`,
whose uncorrected first steps are ~10x ``lr`` and, with momentum, move the fresh corrections far at once;
``adam``, the default: :class:`Adam`, whose bias-corrected steps are about ``lr``), both with
``train.coefficient_decay``: a decoupled decay (``p <- (1 - decay) p`` after each update) that pulls the
corrections towards the base solver.
"""
from __future__ import annotations

import torch

OFFSET_OPTIMIZERS = ("rmsprop", "sgd")
COEFFICIENT_OPTIMIZERS = ("adam", "rmsprop")


class RMSpropMomentum:
    def __init__(self, param: torch.Tensor, lr: float, momentum: float = 0.9, alpha: float = 0.99,
                 eps: float = 1e-8, decay: float = 0.0):
        self.param, self.lr, self.momentum, self.alpha, self.eps = param, float(lr), momentum, alpha, eps
        self.decay = float(decay)
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
        _shrink(self.param, self.decay)

    def state(self) -> dict:
        return {"square_avg": self.square_avg, "momentum_buffer": self.momentum_buffer}

    def load(self, state: dict) -> None:
        self.square_avg = state["square_avg"].to(self.param).clone()
        self.momentum_buffer = state["momentum_buffer"].to(self.param).clone()


class Adam:
    """Bias-corrected Adam (``torch.optim.Adam`` without its coupled weight decay): its first steps are about
    ``lr`` per parameter, where RMSprop's uncorrected ``square_avg`` makes them ~10x larger."""

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 decay: float = 0.0):
        self.param, self.lr, self.betas, self.eps, self.decay = param, float(lr), betas, eps, float(decay)
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.step_count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        b1, b2 = self.betas
        self.step_count += 1
        t = float(self.step_count)
        self.exp_avg.mul_(b1).add_(g, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq / (1 - b2 ** t)).sqrt_().add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-self.lr / (1 - b1 ** t))
        _shrink(self.param, self.decay)

    def state(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "step_count": self.step_count}

    def load(self, state: dict) -> None:
        self.exp_avg = state["exp_avg"].to(self.param).clone()
        self.exp_avg_sq = state["exp_avg_sq"].to(self.param).clone()
        self.step_count = state["step_count"].to(torch.float64).clone()


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


def _shrink(param: torch.Tensor, decay: float) -> None:
    """Decoupled decay: after the update, ``p <- (1 - decay) p`` (a pull towards zero that no gradient scales)."""
    if decay:
        param.mul_(1.0 - decay)


def zero_grad(*params: torch.Tensor) -> None:
    for p in params:
        p.grad = None
