"""Per-sample training losses between student and teacher images (both ``[B, C, H, W]`` in ``[-1, 1]``).

* ``l2``: mean squared error over pixels (the official LD3 "L2");
* ``l1``: mean absolute error;
* ``pseudo_huber``: ``sqrt(||d||^2 + c^2) - c`` with ``c = 0.00054 sqrt(C H W)`` (Song & Dhariwal 2023);
* ``lpips``: LPIPS-VGG (Zhang et al. 2018), the paper's choice for RGB images.

The per-sample distances are those of :mod:`ld3_cli.metrics.distances`.

``auto`` is LPIPS for RGB images (the paper's loss) and L2 otherwise.  LPIPS is never replaced
silently: when its files are missing, :func:`check_loss` (which the CLI runs before any model
loads) stops with one line naming each file, where it goes, and ``train.loss=l2`` as the
alternative.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..errors import ConfigError, MissingFileError
from ..metrics.distances import l1, l2, pseudo_huber

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("auto", "l2", "l1", "pseudo_huber", "lpips")
log = logging.getLogger(__name__)


def pseudo_huber_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return pseudo_huber(a, b, c=None, reduction="norm")


def loss_for(name: str, image_channels: int) -> str:
    """The loss ``name`` stands for: ``auto`` is LPIPS for RGB images (the paper's) and L2 otherwise."""
    if name not in LOSSES:
        raise ConfigError(f"train.loss must be one of {LOSSES}, got '{name}'")
    if name == "auto":
        return "lpips" if image_channels == 3 else "l2"
    return name


def check_loss(name: str, image_channels: int, lpips_weights: Optional[str] = None) -> str:
    """The loss that will be used; LPIPS without its files is a :class:`MissingFileError` (never replaced)."""
    used = loss_for(name, image_channels)
    if used == "lpips":
        from ..metrics.lpips_loss import lpips_missing_message

        msg = lpips_missing_message("vgg", lpips_weights)
        if msg:
            raise MissingFileError(msg)
    return used


def resolve_loss(name: str, image_channels: int, device: torch.device,
                 lpips_weights: Optional[str] = None) -> tuple[str, LossFn]:
    """Return ``(name_used, fn)`` with ``fn(student, teacher) -> [B]``."""
    name = check_loss(name, image_channels, lpips_weights)
    if name != "lpips":
        log.info("training loss: %s", name)
        return name, {"l2": l2, "l1": l1, "pseudo_huber": pseudo_huber_loss}[name]
    from ..metrics.lpips_loss import build_lpips

    net = build_lpips("vgg", backbone_weights=lpips_weights, device=device)

    def lpips_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b).flatten()

    return name, lpips_fn
