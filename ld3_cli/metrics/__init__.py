"""Metrics: FID (pytorch-fid's Inception from local weights), Frechet distance, reference
statistics, LPIPS from local weights, and per-sample distances.  See docs/metrics.md.

Image conventions: uint8 ``[B, H, W, C]`` or float ``[B, C, H, W]`` in ``[-1, 1]``.
"""
from ld3_cli.metrics.distances import DISTANCES, fd_pixels, l1, l2, pixel_features, pseudo_huber, psnr, rmse
from ld3_cli.metrics.frechet import StatsAccumulator, feature_statistics, frechet_distance
from ld3_cli.metrics.inception import (
    FEATURE_DIM,
    FID_WEIGHTS_URL,
    InceptionFeatures,
    build_fid_inception,
    default_inception_weights_path,
    inception_weights_available,
)
from ld3_cli.metrics.lpips_loss import BACKBONES, LPIPSDistance, build_lpips, default_backbone_path, lpips_available
from ld3_cli.metrics.reference import (
    compute_reference_stats,
    iter_image_batches,
    load_reference_stats,
    save_reference_stats,
)

__all__ = [
    "BACKBONES",
    "DISTANCES",
    "FEATURE_DIM",
    "FID_WEIGHTS_URL",
    "InceptionFeatures",
    "LPIPSDistance",
    "StatsAccumulator",
    "build_fid_inception",
    "build_lpips",
    "compute_reference_stats",
    "default_backbone_path",
    "default_inception_weights_path",
    "fd_pixels",
    "feature_statistics",
    "frechet_distance",
    "inception_weights_available",
    "iter_image_batches",
    "l1",
    "l2",
    "load_reference_stats",
    "lpips_available",
    "pixel_features",
    "pseudo_huber",
    "psnr",
    "rmse",
    "save_reference_stats",
]
