"""Metrics: FID (pytorch-fid's Inception from local weights), Frechet distance, pixel-space
statistics (the ``fd_pixels`` suite), reference statistics, LPIPS from local weights, and
per-sample distances.  See docs/metrics.md.

The names below load their module on first use (importing the package loads nothing, so
the CLI does not pay for torchvision unless a metric needs it).

Image conventions: uint8 ``[B, H, W, C]`` or float ``[B, C, H, W]`` in ``[-1, 1]``.
"""
from __future__ import annotations

import importlib

# name -> the module of ld3_cli.metrics that defines it
_HOMES = {
    "DISTANCES": "distances",
    "l1": "distances",
    "l2": "distances",
    "pseudo_huber": "distances",
    "psnr": "distances",
    "rmse": "distances",
    "StatsAccumulator": "frechet",
    "feature_statistics": "frechet",
    "frechet_distance": "frechet",
    "FEATURE_DIM": "inception",
    "FID_WEIGHTS_URL": "inception",
    "InceptionFeatures": "inception",
    "build_fid_inception": "inception",
    "default_inception_weights_path": "inception",
    "inception_weights_available": "inception",
    "BACKBONES": "lpips_loss",
    "LPIPSDistance": "lpips_loss",
    "build_lpips": "lpips_loss",
    "default_backbone_path": "lpips_loss",
    "lpips_available": "lpips_loss",
    "exact_sample_images": "pixel_fd",
    "pixel_statistics": "pixel_fd",
    "pixel_vectors": "pixel_fd",
    "compute_reference_stats": "reference",
    "load_reference_stats": "reference",
    "save_reference_stats": "reference",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
