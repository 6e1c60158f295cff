"""Classifier-free guidance as a wrapper around any conditional sigma-space denoiser.

``D_s(x, sigma, c) = D(x, sigma, u) + s * (D(x, sigma, c) - D(x, sigma, u))``

with ``u`` the "unconditional" condition (a null class label, the empty / negative prompt).
Guidance is applied to the x0 prediction; for eps- and v-predicting networks this is the
same as guiding the network output, because the conversion to x0 is affine in the output
with coefficients that do not depend on the condition.

Both halves go through the wrapped model in ONE batched call (``[cond; uncond]`` stacked on
the batch axis); ``s = 1`` skips the unconditional half, ``s = 0`` the conditional half.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from .base import ConditionSpec, Denoiser

Uncond = int | float | torch.Tensor | Callable[[Any], Any]
# what the wrapped model knows of its own, unguided distribution: a guided one has no such closed form
UNGUIDED_ONLY = frozenset({"sample_exact"})


def null_condition(uncond: Uncond, cond: Any) -> Any:
    """The unconditional counterpart of a batch ``cond``.

    ``uncond`` may be a number (``torch.full_like(cond, uncond)``: a null class label or
    a null prompt index), a tensor (broadcast along the batch axis to ``cond``'s batch size,
    e.g. the empty-prompt embedding ``[1, L, D]``), or a callable ``uncond(cond) -> batch``.
    """
    if callable(uncond) and not isinstance(uncond, torch.Tensor):
        return uncond(cond)
    if not isinstance(cond, torch.Tensor):
        raise ConfigError(f"CFG got a {type(cond).__name__} condition with a fixed uncond; "
                          "pass uncond as a callable cond -> unconditional batch")
    if isinstance(uncond, (int, float)):
        return torch.full_like(cond, uncond)
    u = uncond.to(device=cond.device, dtype=cond.dtype)
    if u.dim() == cond.dim() - 1:
        u = u.unsqueeze(0)
    if u.shape[0] == 1:
        u = u.expand(cond.shape[0], *u.shape[1:])
    if u.shape != cond.shape:
        raise ConfigError(f"CFG uncond of shape {tuple(uncond.shape)} does not match the condition "
                          f"of shape {tuple(cond.shape)}")
    return u


def cat_conditions(a: Any, b: Any) -> Any:
    """Stack two condition batches on the batch axis (tensors, or dicts / tuples of them)."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b.to(a.device)], dim=0)
    if isinstance(a, dict):
        return {k: cat_conditions(a[k], b[k]) for k in a}
    if isinstance(a, (tuple, list)):
        return type(a)(cat_conditions(x, y) for x, y in zip(a, b))
    raise ConfigError(f"cannot batch conditions of type {type(a).__name__} for guidance")


class CFGDenoiser(Denoiser):
    """Classifier-free guidance around ``denoiser`` with scale ``scale`` (1 = no guidance).

    Args:
        denoiser: a conditional :class:`Denoiser`; its schedule, shape, decode and
            draw_conditions are those of the wrapper.  Attributes the wrapper does not have
            (e.g. ``encode_prompts``) are looked up on it.
        scale: guidance scale ``s``.
        uncond: the unconditional condition, see :func:`null_condition`.

    ``forward(x [B,C,H,W], sigma [B], cond)`` requires ``cond`` (a batch of B conditions).
    """

    def __init__(self, denoiser: Denoiser, scale: float, uncond: Uncond):
        super().__init__()
        self.inner = denoiser
        self.scale = float(scale)
        self.uncond = uncond
        self.schedule = denoiser.schedule
        self.shape = tuple(denoiser.shape)
        spec = denoiser.condition
        self.condition = ConditionSpec(kind=spec.kind, num_classes=spec.num_classes,
                                       guidance_scale=self.scale, extra=dict(spec.extra))
        self.name = denoiser.name if self.scale == 1 else f"{denoiser.name}-cfg{self.scale:g}"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("inner")
            if inner is None or (name in UNGUIDED_ONLY and self.__dict__.get("scale") != 1.0):
                raise
            return getattr(inner, name)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.inner.image_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any | None = None) -> torch.Tensor:
        if cond is None:
            raise ConfigError("classifier-free guidance needs a condition batch; draw one with "
                              "model.draw_conditions(seeds)")
        if self.scale == 1.0:
            return self.inner(x, sigma, cond)
        u = null_condition(self.uncond, cond)
        if self.scale == 0.0:
            return self.inner(x, sigma, u)
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), cat_conditions(cond, u))
        d_c, d_u = both.chunk(2)
        return d_u + self.scale * (d_c - d_u)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(x)

    def draw_conditions(self, seeds: torch.Tensor):
        return self.inner.draw_conditions(seeds)

    def describe(self) -> dict:
        return {**self.inner.describe(), "name": self.name, "guidance_scale": self.scale}
