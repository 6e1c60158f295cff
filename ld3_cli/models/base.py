"""The one interface every model is seen through: an x0-predicting denoiser in EDM sigma-space.

``D(x, sigma, cond) -> x0_hat`` where

* ``x``: ``[B, C, H, W]`` canonical state ``x = x0 + sigma * n`` (for VP / flow models this is
  ``x_t / alpha(t)``; adapters do the conversion), same dtype/device as the model;
* ``sigma``: ``[B]`` tensor of EDM noise levels (any float dtype; the model casts);
* ``cond``: ``None``, a ``[B]`` long tensor of class labels, or a model-specific condition
  object (text embeddings) -- see :class:`ConditionSpec`;
* returns ``x0_hat`` with the shape and dtype of ``x``.

``decode(x)`` maps a solver output to images in ``[-1, 1]`` (identity for pixel models in
that range, the VAE for latent models, a rescale for models trained on other ranges).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..data.seeds import SEED_SHIFTS
from ..schedules.noise import NoiseSchedule


@dataclass(frozen=True)
class ConditionSpec:
    """What a model is conditioned on.

    kind: ``none`` | ``class`` (integer labels in ``[0, num_classes)``) | ``text`` (prompts).
    guidance_scale: classifier-free guidance scale applied by the model's wrapper (1 = none).
    """

    kind: str = "none"
    num_classes: int = 0
    guidance_scale: float = 1.0
    extra: dict = field(default_factory=dict)

    @property
    def conditional(self) -> bool:
        return self.kind != "none"


class Denoiser(torch.nn.Module):
    """Base class of all models.  Subclasses set ``schedule``, ``shape`` and implement ``forward``.

    Attributes:
        schedule: the model's :class:`NoiseSchedule` (native time <-> sigma).
        shape: ``(C, H, W)`` of the state the solver integrates (latents for latent models).
        image_shape: ``(C, H, W)`` of ``decode(x)``.
        condition: :class:`ConditionSpec`.
        name: short identifier used in tables.
    """

    schedule: NoiseSchedule
    shape: tuple[int, int, int]
    condition: ConditionSpec = ConditionSpec()
    name: str = "denoiser"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.shape

    def forward(self, x: torch.Tensor, sigma: torch.Tensor,
                cond: Optional[Any] = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Solver output -> images in [-1, 1] (identity by default)."""
        return x

    # -- conditions ------------------------------------------------------------------------
    def draw_conditions(self, seeds: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample conditions from per-sample seeds (class labels uniform in range), or None."""
        if self.condition.kind != "class":
            return None
        labels = [int(torch.randint(self.condition.num_classes, (1,),
                                    generator=torch.Generator().manual_seed(int(s) + SEED_SHIFTS.class_label)).item())
                  for s in seeds.tolist()]
        return torch.tensor(labels, dtype=torch.long)

    # -- device / dtype ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def describe(self) -> dict:
        """Plain-data summary for manifests."""
        return {"name": self.name, "shape": list(self.shape), "image_shape": list(self.image_shape),
                "schedule": self.schedule.to_dict(), "condition": self.condition.kind}
