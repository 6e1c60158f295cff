"""A minimal user-style model, the template for ``model._target_=your_pkg.YourDenoiser``.

Any class works if it subclasses :class:`~ld3_cli.models.Denoiser`, sets ``schedule`` and
``shape`` and implements ``forward(x, sigma, cond) -> x0`` in sigma-space.  This one is the
exact denoiser of Gaussian data ``N(mean, std^2 I)``:

    D(x, sigma) = mean + std^2 / (std^2 + sigma^2) * (x - mean)

Run it with ``ld3 run model=custom model._target_=ld3_cli.models.examples.GaussianDenoiser``
(extra constructor arguments as ``+model.std=0.3``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..schedules.noise import EDM
from .base import Denoiser


class GaussianDenoiser(Denoiser):
    name = "gaussian"

    def __init__(self, shape: Sequence[int] = (1, 28, 28), mean: float = 0.0, std: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.schedule = EDM(sigma_min, sigma_max)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        s2 = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1))) ** 2
        v = self.std.to(x.dtype) ** 2
        return self.mean + v / (v + s2) * (x - self.mean)

    @torch.no_grad()
    def sample_exact(self, n: int, generator: Optional[torch.Generator] = None, labels=None):
        x0 = self.mean + self.std * torch.randn(n, *self.shape, generator=generator)
        return x0, torch.zeros(n, dtype=torch.long)
