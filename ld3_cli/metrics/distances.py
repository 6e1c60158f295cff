"""Per-sample distances between image batches.

All distances take two tensors of one shape ``[B, ...]`` (images are float ``[B, C, H, W]`` in
``[-1, 1]``) and return ``[B]``: one value per sample, reduced over every non-batch element.
They are differentiable, so each can serve as the LD3 training loss.

* ``l2``  — mean squared error over the elements of a sample (the official LD3 "L2" loss);
* ``l1``  — mean absolute error;
* ``rmse`` — ``sqrt(l2)``;
* ``psnr`` — ``10 log10(data_range^2 / l2)`` with ``data_range = 2`` for ``[-1, 1]`` images
  (``+inf`` for identical samples);
* ``pseudo_huber`` — the pseudo-Huber form of Song & Dhariwal 2023 (improved consistency
  training), ``sqrt(d^2 + c^2) - c``.  Default ``reduction='mean'``: ``d`` is each element's
  difference and the result is the mean over the ``D`` elements of a sample (the form the LD3
  trainer uses); ``reduction='norm'``: ``d`` is the Euclidean norm of the whole sample's
  difference, exactly the paper's loss.  ``c = 0.00054 sqrt(D)`` when ``c`` is None (the
  paper's scaling; 0.03 for 3x32x32).

The pixel-space Frechet distance of the ``fd_pixels`` suite is not here: see :mod:`ld3_cli.metrics.pixel_fd`.
"""
from __future__ import annotations

import math

import torch

from ld3_cli.metrics.images import as_tensor


def _diff(a, b) -> torch.Tensor:
    a, b = as_tensor(a), as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"distance inputs must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < 2:
        raise ValueError(f"distance inputs must be [B, ...] with at least one element per sample, got {tuple(a.shape)}")
    return (a - b).flatten(1)


def l2(a, b) -> torch.Tensor:
    """Mean squared error per sample, ``[B]``."""
    return _diff(a, b).square().mean(dim=1)


def l1(a, b) -> torch.Tensor:
    """Mean absolute error per sample, ``[B]``."""
    return _diff(a, b).abs().mean(dim=1)


def rmse(a, b) -> torch.Tensor:
    """Root mean squared error per sample, ``[B]``."""
    return l2(a, b).sqrt()


def psnr(a, b, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, ``[B]``; ``data_range`` 2.0 for ``[-1, 1]`` images."""
    return 10.0 * torch.log10(data_range ** 2 / l2(a, b))


def pseudo_huber(a, b, c: float | None = 0.03, reduction: str = "mean") -> torch.Tensor:
    """Pseudo-Huber ``sqrt(d^2 + c^2) - c`` per sample, ``[B]`` (see the module docstring).

    ``reduction='mean'``: per-element ``d``, averaged over the sample; ``'norm'``: ``d = |a - b|_2``
    over the whole sample.  ``c=None``: ``0.00054 sqrt(D)`` with ``D`` elements per sample.
    """
    d = _diff(a, b)
    if c is None:
        c = 0.00054 * math.sqrt(d.shape[1])
    if reduction == "mean":
        return (torch.sqrt(d.square() + c * c) - c).mean(dim=1)
    if reduction == "norm":
        return torch.sqrt(d.square().sum(dim=1) + c * c) - c
    raise ValueError(f"reduction must be 'mean' or 'norm', got {reduction!r}")


DISTANCES = {"l2": l2, "l1": l1, "rmse": rmse, "psnr": psnr, "pseudo_huber": pseudo_huber}

