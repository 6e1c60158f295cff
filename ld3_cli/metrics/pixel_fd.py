"""Pixel-space statistics of image sets, for the Frechet distances ``fd_exact`` and ``fd_data`` (not FIDs).

This is the one pixel-space Frechet path: the ``fd_pixels`` metric suite scores with it, as
:func:`~ld3_cli.metrics.frechet.frechet_distance` of two :func:`pixel_statistics`.  An image is its
flattened pixels in ``[-1, 1]``: uint8 ``[H, W, C]`` -> float64 ``x / 127.5 - 1`` in HWC order.
``fd_exact`` compares the samples with exact samples of the model's own distribution (pure solver
error, for models that can draw them: ``sample_exact``); ``fd_data`` compares them with the
dataset's images.  It is not an FID and must not be reported as one.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from ..data.seeds import SEED_SHIFTS
from .frechet import stream_statistics
from .images import to_uint8

EXACT_BATCH = 1000


def pixel_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[b, H, W, C]`` -> float64 ``[b, H*W*C]`` in ``[-1, 1]`` (HWC order)."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0)


def pixel_statistics(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu [d], sigma [d, d], n)`` of the :func:`pixel_vectors` of uint8 image batches."""
    return stream_statistics(batches, pixel_vectors)


def exact_sample_images(model, n: int, seed: int,
                        shift: int = SEED_SHIFTS.exact_samples) -> Iterator[np.ndarray]:
    """uint8 ``[b, H, W, C]`` batches of ``n`` exact samples of ``model`` (``sample_exact``), decoded.

    Drawn in batches of :data:`EXACT_BATCH` from one generator seeded with ``seed + shift``
    (:data:`~ld3_cli.data.seeds.SEED_SHIFTS`: ``exact_samples``, or ``noise_floor`` for the floor's set).
    """
    gen = torch.Generator().manual_seed(int(seed) + int(shift))
    for i in range(0, n, EXACT_BATCH):
        x0, _ = model.sample_exact(min(EXACT_BATCH, n - i), generator=gen)
        yield to_uint8(model.decode(x0))
