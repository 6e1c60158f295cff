"""Per-sample training losses between student and teacher images (both ``[B, C, H, W]`` in ``[-1, 1]``).

* ``l2``: mean squared error over pixels (the official LD3 "L2");
* ``l1``: mean absolute error;
* ``pseudo_huber``: ``sqrt(||d||^2 + c^2) - c`` with ``c = 0.00054 sqrt(C H W)`` (Song & Dhariwal 2023);
* ``lpips``: LPIPS-VGG (Zhang et al. 2018), the paper's choice for RGB images.

The per-sample distances are those of :mod:`ld3_cli.metrics.distances`.

``resolve_loss("auto", ...)`` picks LPIPS when its weights are present and the images are RGB,
else L2, and returns the name actually used.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..metrics.distances import l1, l2, pseudo_huber

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("auto", "l2", "l1", "pseudo_huber", "lpips")
log = logging.getLogger(__name__)


def pseudo_huber_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return pseudo_huber(a, b, c=None, reduction="norm")


def resolve_loss(name: str, image_channels: int, device: torch.device,
                 lpips_weights: Optional[str] = None) -> tuple[str, LossFn]:
    """Return ``(name_used, fn)`` with ``fn(student, teacher) -> [B]``."""
    if name not in LOSSES:
        raise ConfigError(f"train.loss must be one of {LOSSES}, got '{name}'")
    if name == "auto":
        name = "l2"
        if image_channels == 3:
            from ..metrics.lpips_loss import lpips_available

            if lpips_available("vgg", lpips_weights):
                name = "lpips"
            else:
                log.warning("LPIPS-VGG backbone weights not found: training with the L2 loss instead "
                            "(put vgg16-397923af.pth in the torch hub cache or set train.lpips_weights)")
    if name == "l2":
        return name, l2
    if name == "l1":
        return name, l1
    if name == "pseudo_huber":
        return name, pseudo_huber_loss
    from ..metrics.lpips_loss import build_lpips

    net = build_lpips("vgg", backbone_weights=lpips_weights, device=device)

    def lpips_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b).flatten()

    return name, lpips_fn
