"""A learned spatial residual on each step of a linear multistep run: a correction outside the linear span.

A step of a coefficient table (:mod:`~ld3_cli.solvers.multistep`) moves the state inside the span of the state and
the buffered network outputs, whatever its weights.  The residual operator (the idea of SpanLift, Kim et al. 2026,
arXiv 2606.08672; ld3's own form) adds to step ``i``'s affine part ``a_i x_i + b_i F_i`` a small convolutional
network of the same buffers, so the step reaches what no weighting of the buffers can:

    r_i        = (sigma_i - sigma_{i+1}) R_i([x_i / sqrt(1 + sigma_i^2), F_i, F_{i-1}, ..., F_{i-K+1}])
    R_i        = conv3x3(C (K + 1) -> W) -> SiLU -> conv3x3(W -> W) -> SiLU -> conv3x3(W -> C)

with the features stacked as channels (a missing history output is zero), ``C`` the state's channels, ``K`` the
table's history and ``W`` the width; steps before ``first`` have no network (``r_i = 0``: the residual acts on the
last ``steps - first`` steps only).  ``F`` is what the table combines: noise estimates (form ``"noise"``) or data
predictions (form ``"data"``), both of unit order, as is the scaled state.  The residual enters before the
predictor's history terms and the corrector's, so a corrector step (UniPC) carries it too.  Each step has its own
network; its last layer is zero at initialisation, so the run is then exactly the table's.  It costs no network
evaluation: a few small convolutions per step (``run_multistep`` calls :meth:`ResidualOperator.step`).

Shapes: the state is ``[B, C, H, W]`` (any ``H``, ``W``: the convolutions pad by one).  The weights are kept in
float32 and used in the state's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

Tensor = torch.Tensor
LAYERS = 3                           # convolutions per step
PARTS = ("w1", "b1", "w2", "b2", "w3", "b3")


class ResidualOperator(nn.Module):
    """Per-step residual networks for steps ``first .. steps - 1`` of a ``steps``-step table of history ``history``
    on states of ``channels`` channels, ``width`` hidden channels (module docstring).  ``generator`` seeds the hidden
    layers' initial weights (PyTorch's default convolution initialisation; ``init=False``: all zero, for weights
    loaded next); the last layer starts at zero."""

    def __init__(self, steps: int, channels: int, history: int, width: int = 16,
                 generator: Optional[torch.Generator] = None, first: int = 0, init: bool = True):
        super().__init__()
        if min(int(steps), int(channels), int(history), int(width)) < 1 or not 0 <= int(first) < int(steps):
            raise ConfigError(f"a residual operator needs steps, channels, history and width >= 1 and 0 <= first < "
                              f"steps, got {steps}, {channels}, {history}, {width}, first {first}")
        self.steps, self.channels, self.history, self.width = int(steps), int(channels), int(history), int(width)
        self.first = int(first)
        cin = self.channels * (self.history + 1)
        shapes = {"w1": (self.width, cin, 3, 3), "b1": (self.width,), "w2": (self.width, self.width, 3, 3),
                  "b2": (self.width,), "w3": (self.channels, self.width, 3, 3), "b3": (self.channels,)}
        self.weights = nn.ParameterList()
        for _ in self.covered():
            for name in PARTS:
                self.weights.append(nn.Parameter(torch.zeros(shapes[name])))
        if init:
            self._init_hidden(generator)

    @torch.no_grad()
    def _init_hidden(self, generator: Optional[torch.Generator]) -> None:
        """The hidden layers' initial weights (the last layer stays zero)."""
        for i in self.covered():
            for layer in (1, 2):  # PyTorch's Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both
                w, b = self.part(i, f"w{layer}"), self.part(i, f"b{layer}")
                bound = 1.0 / float(w[0].numel()) ** 0.5
                w.copy_(torch.rand(w.shape, generator=generator) * 2 * bound - bound)
                b.copy_(torch.rand(b.shape, generator=generator) * 2 * bound - bound)

    def covered(self) -> range:
        """The steps that have a network."""
        return range(self.first, self.steps)

    def part(self, step: int, name: str) -> nn.Parameter:
        """Step ``step``'s tensor ``name`` (one of :data:`PARTS`; ``step`` in :meth:`covered`)."""
        return self.weights[(step - self.first) * len(PARTS) + PARTS.index(name)]

    def config(self) -> dict:
        """The sizes that rebuild it (:meth:`from_tensors`)."""
        return {"steps": self.steps, "channels": self.channels, "history": self.history, "width": self.width,
                "first": self.first}

    def step(self, i: int, x: Tensor, hist: list, sigma: Tensor, sigma_next: Tensor) -> Optional[Tensor]:
        """The residual ``r_i`` of step ``i`` (``hist``: ``F_i, F_{i-1}, ...``, latest first; ``sigma``,
        ``sigma_next``: 0-d tensors of the grid); ``None`` for a step before ``first``."""
        if i < self.first:
            return None
        dt = x.dtype
        pad = [torch.zeros_like(x)] * (self.history - len(hist))
        scale = torch.rsqrt(1 + sigma * sigma).to(dt)
        h = torch.cat([x * scale, *hist[:self.history], *pad], 1)
        for layer in range(1, LAYERS + 1):
            w, b = (self.part(i, f"{p}{layer}").to(x.device, dt) for p in "wb")
            h = F.conv2d(h, w, b, padding=1)
            if layer < LAYERS:
                h = F.silu(h)
        return (sigma - sigma_next).to(dt) * h

    @torch.no_grad()
    def magnitude(self) -> float:
        """Largest absolute weight of the last layers (0 at initialisation)."""
        return max(float(torch.cat([self.part(i, "w3").flatten(), self.part(i, "b3")]).abs().max())
                   for i in self.covered())

    def tensors(self, prefix: str = "residual.") -> dict:
        """Flat ``{prefix + "<step>.<part>": tensor}`` (detached, as stored)."""
        return {f"{prefix}{i}.{name}": self.part(i, name).detach() for i in self.covered() for name in PARTS}

    @classmethod
    def from_tensors(cls, tensors: dict, config: dict, prefix: str = "residual.") -> "ResidualOperator":
        """Inverse of :meth:`tensors` + :meth:`config` (ConfigError on a missing or misshapen tensor)."""
        op = cls(int(config["steps"]), int(config["channels"]), int(config["history"]), int(config["width"]),
                 first=int(config.get("first", 0)), init=False)
        with torch.no_grad():
            for i in op.covered():
                for name in PARTS:
                    key, target = f"{prefix}{i}.{name}", op.part(i, name)
                    if key not in tensors:
                        raise ConfigError(f"the residual operator lacks its tensor {key}")
                    if tuple(tensors[key].shape) != tuple(target.shape):
                        raise ConfigError(f"the residual operator's {key} has shape {tuple(tensors[key].shape)}, "
                                          f"expected {tuple(target.shape)}")
                    target.copy_(tensors[key])
        return op

    def detached(self) -> "ResidualOperator":
        """A copy on the CPU that no gradient reaches."""
        out = ResidualOperator.from_tensors({k: v.cpu() for k, v in self.tensors().items()}, self.config())
        return out.requires_grad_(False)
