"""Distances between student and teacher images of the same noises (eval's held-out teacher distances).

Images are float ``[n, C, H, W]`` in ``[-1, 1]``.  ``rmse`` is pooled over every pixel of every
image; ``psnr`` (dB, :func:`~ld3_cli.metrics.distances.psnr`) is the mean over images; ``lpips``
(LPIPS-VGG, RGB only, when its backbone weights are present) is the mean over images.
"""
from __future__ import annotations

import torch

from .distances import psnr
from .lpips_loss import build_lpips, lpips_available

# the metrics this module gives (computed on the held-out noises, not on the samples)
HELDOUT_METRICS = ("rmse", "psnr", "lpips")


def teacher_distances(student: torch.Tensor, teacher: torch.Tensor, batch_size: int) -> dict[str, float]:
    """``{"rmse", "psnr"[, "lpips"]}`` between ``student`` and ``teacher`` (LPIPS in batches of ``batch_size``)."""
    res = {"rmse": float(((student - teacher) ** 2).mean().sqrt()), "psnr": float(psnr(student, teacher).mean())}
    if student.shape[1] == 3 and lpips_available("vgg"):
        net = build_lpips("vgg", device=student.device)
        with torch.no_grad():
            res["lpips"] = float(torch.cat([net(student[i:i + batch_size], teacher[i:i + batch_size]).flatten()
                                            for i in range(0, student.shape[0], batch_size)]).mean())
    return res
