"""Pixel-space statistics of image sets, for the Frechet distances ``fd_exact`` and ``fd_data`` (not FIDs).

An image is its flattened pixels in ``[-1, 1]``: uint8 ``[H, W, C]`` -> float64 ``x / 127.5 - 1``
in HWC order.  ``fd_exact`` compares the samples with exact samples of the model's own
distribution (pure solver error, for models that can draw them: ``sample_exact``);
``fd_data`` compares them with the dataset's images.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import torch

from .frechet import stream_statistics
from .images import to_uint8

EXACT_BATCH = 1000
EXACT_SEED_SHIFT = 12_345  # exact samples use seed + this (never the seed of a teacher or student noise)
FLOOR_SEED_SHIFT = 54_321  # the noise floor's exact samples: a set drawn apart from the reference set


def pixel_vectors(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[b, H, W, C]`` -> float64 ``[b, H*W*C]`` in ``[-1, 1]`` (HWC order)."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float64) / 127.5 - 1.0)


def pixel_statistics(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu [d], sigma [d, d], n)`` of the :func:`pixel_vectors` of uint8 image batches."""
    return stream_statistics(batches, pixel_vectors)


def exact_sample_images(model, n: int, seed: int, shift: int = EXACT_SEED_SHIFT) -> Iterator[np.ndarray]:
    """uint8 ``[b, H, W, C]`` batches of ``n`` exact samples of ``model`` (``sample_exact``), decoded.

    Drawn in batches of :data:`EXACT_BATCH` from one generator seeded with ``seed + shift``.
    """
    gen = torch.Generator().manual_seed(int(seed) + int(shift))
    for i in range(0, n, EXACT_BATCH):
        x0, _ = model.sample_exact(min(EXACT_BATCH, n - i), generator=gen)
        yield to_uint8(model.decode(x0))
