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

from ..errors import ConfigError

OFFSET_OPTIMIZERS = ("rmsprop", "sgd")
COEFFICIENT_OPTIMIZERS = ("adam", "rmsprop")


class _Optimizer:
    """One learned tensor's optimiser.  Its hyperparameters are attributes.  Everything that changes is in
    ``state``: ``lr`` and the buffers, which the updates change in place.  The trainer's state holds that
    dict as it is, so saving it saves the optimiser."""

    buffers: tuple = ()  # the state's tensors shaped like the parameter

    def __init__(self, param: torch.Tensor, lr: float):
        self.param = param
        self.state = {"lr": float(lr), **{k: torch.zeros_like(param) for k in self.buffers}}

    @property
    def lr(self) -> float:
        return self.state["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.state["lr"] = float(value)

    def load_state_dict(self, state: dict) -> None:
        """Adopt a saved ``state`` (copies of its buffers, on the parameter's device and dtype)."""
        missing = [k for k in self.state if k not in state]
        if missing:
            raise ConfigError(f"the saved {type(self).__name__} state lacks {', '.join(missing)}")
        self.state = {k: float(state[k]) if k == "lr" else self._adopt(k, state[k]) for k in self.state}

    def _adopt(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.param).clone()


class RMSpropMomentum(_Optimizer):
    buffers = ("square_avg", "momentum_buffer")

    def __init__(self, param: torch.Tensor, lr: float, momentum: float = 0.9, alpha: float = 0.99,
                 eps: float = 1e-8, decay: float = 0.0):
        super().__init__(param, lr)
        self.momentum, self.alpha, self.eps, self.decay = momentum, alpha, eps, float(decay)

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        square_avg, momentum_buffer = self.state["square_avg"], self.state["momentum_buffer"]
        square_avg.mul_(self.alpha).addcmul_(g, g, value=1 - self.alpha)
        momentum_buffer.mul_(self.momentum).add_(g / (square_avg.sqrt() + self.eps))
        self.param.add_(momentum_buffer, alpha=-self.lr)
        _shrink(self.param, self.decay)


class Adam(_Optimizer):
    """Bias-corrected Adam (``torch.optim.Adam`` without its coupled weight decay): its first steps are about
    ``lr`` per parameter, where RMSprop's uncorrected ``square_avg`` makes them ~10x larger."""

    buffers = ("exp_avg", "exp_avg_sq")

    def __init__(self, param: torch.Tensor, lr: float, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 decay: float = 0.0):
        super().__init__(param, lr)
        self.betas, self.eps, self.decay = betas, eps, float(decay)
        self.state["step_count"] = torch.zeros((), dtype=torch.float64)  # on the CPU, whatever the parameter

    @torch.no_grad()
    def step(self) -> None:
        g = self.param.grad
        if g is None:
            return
        b1, b2 = self.betas
        exp_avg, exp_avg_sq, step_count = self.state["exp_avg"], self.state["exp_avg_sq"], self.state["step_count"]
        step_count += 1
        t = float(step_count)
        exp_avg.mul_(b1).add_(g, alpha=1 - b1)
        exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (exp_avg_sq / (1 - b2 ** t)).sqrt_().add_(self.eps)
        self.param.addcdiv_(exp_avg, denom, value=-self.lr / (1 - b1 ** t))
        _shrink(self.param, self.decay)

    def _adopt(self, name: str, value: torch.Tensor) -> torch.Tensor:
        return value.to(torch.float64).clone() if name == "step_count" else super()._adopt(name, value)


class SGD(_Optimizer):
    @torch.no_grad()
    def step(self) -> None:
        if self.param.grad is not None:
            self.param.add_(self.param.grad, alpha=-self.lr)


def _shrink(param: torch.Tensor, decay: float) -> None:
    """Decoupled decay: after the update, ``p <- (1 - decay) p`` (a pull towards zero that no gradient scales)."""
    if decay:
        param.mul_(1.0 - decay)


def zero_grad(*params: torch.Tensor) -> None:
    for p in params:
        p.grad = None
