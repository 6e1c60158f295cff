"""Reference statistics (``mu``, ``sigma``) for FID: load, validate, save, compute.

File format: an ``.npz`` with ``mu`` ``[d]`` and ``sigma`` ``[d, d]``.  This is what EDM's
``fid-refs/*.npz`` hold (``np.savez``, float64) and what pytorch-fid's ``--save-stats`` writes
(``np.savez_compressed``; its ``mu`` may be float32); both load here unchanged, as float64.
Saving uses ``np.savez`` (EDM's layout) through a temporary name and ``os.replace``, so a
crash never leaves a half-written file.

``compute_reference_stats`` streams images through a feature function into a
:class:`~ld3_cli.metrics.frechet.StatsAccumulator`; it serves sample sets as well as datasets.
Image sources are those of :func:`ld3_cli.data.images.iter_image_batches`: a folder of png/jpg
images, an ``.npz`` of uint8 images ``[N, H, W, C]``, a list of such shards, or a uint8 array.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ld3_cli.data.images import iter_image_batches
from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.metrics.frechet import stream_statistics

EDM_FID_REFS_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"


def check_stats_shapes(mu: np.ndarray, sigma: np.ndarray, dims: int | None, source: str) -> None:
    """Raise :class:`ConfigError` unless ``mu`` is ``[d]``, ``sigma`` is ``[d, d]`` (finite), and ``d == dims``."""
    if mu.ndim != 1 or sigma.ndim != 2 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ConfigError(f"{source}: mu must be [d] and sigma [d, d], got mu {mu.shape} and sigma {sigma.shape}; "
                          "recompute the reference statistics (ld3_cli.metrics.compute_reference_stats)")
    if dims is not None and mu.shape[0] != dims:
        raise ConfigError(f"{source} holds {mu.shape[0]}-d statistics but the features are {dims}-d; use reference "
                          f"statistics computed with the same feature extractor ({dims}-d: e.g. Inception pool3 "
                          f"from {EDM_FID_REFS_URL} or pytorch-fid --save-stats), or recompute them")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ConfigError(f"{source}: mu / sigma contain NaN or Inf; recompute the reference statistics")


def load_reference_stats(path: str | os.PathLike, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load ``(mu [d], sigma [d, d])`` as float64 from an ``.npz``; validate the shapes (and ``d == dims``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"reference statistics not found at {path}; download the dataset's file from "
                               f"{EDM_FID_REFS_URL} (e.g. cifar10-32x32.npz) to that path, or compute it with "
                               "ld3_cli.metrics.compute_reference_stats")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "mu" not in keys or "sigma" not in keys:
                raise ConfigError(f"{path} has keys {keys}, not 'mu' and 'sigma'; use an EDM fid-refs file or a "
                                  "pytorch-fid --save-stats file")
            mu = np.asarray(data["mu"], dtype=np.float64)
            sigma = np.asarray(data["sigma"], dtype=np.float64)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable .npz of arrays ({exc}); replace it with an EDM fid-refs "
                          "file or a pytorch-fid --save-stats file") from exc
    check_stats_shapes(mu, sigma, dims, str(path))
    return mu, sigma


def save_reference_stats(path: str | os.PathLike, mu, sigma) -> Path:
    """Write ``mu`` / ``sigma`` (float64) with ``np.savez`` atomically; returns the path."""
    path = Path(path).expanduser()
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    check_stats_shapes(mu, sigma, None, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def compute_reference_stats(source, feature_fn: Callable, *, batch_size: int = 250,
                            image_size: int | tuple[int, int] | None = None, num_images: int | None = None,
                            out_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean / covariance (float64) of ``feature_fn`` features over the images of ``source``.

    ``feature_fn`` maps uint8 ``[b, H, W, C]`` to features ``[b, d]`` (e.g.
    :class:`~ld3_cli.metrics.inception.InceptionFeatures` or
    :func:`~ld3_cli.metrics.pixel_fd.pixel_vectors`).  Exactly the images of the source
    (or its first ``num_images``) are used.  With ``out_path`` the result is also saved.
    """
    batches = iter_image_batches(source, batch_size=batch_size, image_size=image_size, num_images=num_images)
    mu, sigma, _ = stream_statistics(batches, feature_fn)
    if out_path is not None:
        save_reference_stats(out_path, mu, sigma)
    return mu, sigma
