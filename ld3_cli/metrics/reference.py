"""Reference statistics (``mu``, ``sigma``) for FID: load, validate, save, compute.

File format: an ``.npz`` with ``mu`` ``[d]`` and ``sigma`` ``[d, d]``.  This is what EDM's
``fid-refs/*.npz`` hold (``np.savez``, float64) and what pytorch-fid's ``--save-stats`` writes
(``np.savez_compressed``; its ``mu`` may be float32); both load here unchanged, as float64.
Saving uses ``np.savez`` (EDM's layout) through a temporary name and ``os.replace``, so a
crash never leaves a half-written file.

``compute_reference_stats`` streams images through a feature function into a
:class:`~ld3_cli.metrics.frechet.StatsAccumulator`; it serves sample sets as well as datasets.
Image sources: a folder of png/jpg images (searched recursively, sorted by path, converted to
RGB as pytorch-fid does), an ``.npz`` of uint8 images ``[N, H, W, C]`` under key ``x``,
``images`` or ``arr_0``, a list of such ``.npz`` shards, or an in-memory uint8 array / tensor.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.metrics.frechet import StatsAccumulator

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_IMAGE_KEYS = ("x", "images", "arr_0")
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


# ----------------------------------------------------------------------------- image sources

def _as_uint8_nhwc(arr: np.ndarray, source: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise ConfigError(f"{source}: images must be uint8 [N,H,W,C], got dtype {arr.dtype}; convert with "
                          "(x * 127.5 + 128).clip(0, 255).astype(np.uint8) for images in [-1, 1]")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = ("; it looks channel-first: transpose to [N,H,W,C]"
                if arr.ndim == 4 and arr.shape[1] in (1, 3) else "")
        raise ConfigError(f"{source}: images must be [N,H,W,C] with C in (1, 3), got shape {arr.shape}{hint}")
    return arr


def _check_size(hw: tuple[int, int], expected: tuple[int, int] | None, what: str) -> None:
    if expected is not None and tuple(hw) != tuple(expected):
        raise ConfigError(f"{what} is {hw[0]}x{hw[1]} (HxW) but FID statistics here need {expected[0]}x{expected[1]} "
                          "images (the model's resolution); resize the dataset to that size first (as EDM's "
                          "dataset_tool.py does) or set image_size to match")


def _npz_images(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in NPZ_IMAGE_KEYS:
                if key in data:
                    return _as_uint8_nhwc(np.asarray(data[key]), f"{path}[{key}]")
            keys = list(data.keys())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable .npz of arrays ({exc}); store images as np.savez(path, "
                          "x=uint8 [N,H,W,C])") from exc
    raise ConfigError(f"{path} has keys {keys} but images are looked up under {list(NPZ_IMAGE_KEYS)}; save them as "
                      "np.savez(path, x=uint8 [N,H,W,C])")


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"no {'/'.join(IMAGE_SUFFIXES)} images found under {folder}; point the source at an "
                          "image folder, an .npz of uint8 images or a list of .npz shards")
    return files


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _normalise_size(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def iter_image_batches(source, batch_size: int = 250, image_size: int | tuple[int, int] | None = None,
                       num_images: int | None = None) -> Iterator[np.ndarray]:
    """Yield uint8 ``[b, H, W, C]`` batches from ``source`` (see the module docstring).

    All images must share one size, equal to ``image_size`` (``H == W == int`` or ``(H, W)``)
    when given.  With ``num_images`` exactly the first ``num_images`` images are yielded, and
    a source holding fewer is an error.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_images is not None and num_images < 1:
        raise ConfigError(f"num_images must be >= 1 (or None for all), got {num_images}")
    expected = _normalise_size(image_size)
    remaining = num_images

    def _folder_batches(files: list[Path]) -> Iterator[tuple[np.ndarray, str]]:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            imgs = [_read_image(p) for p in chunk]
            for p, im in zip(chunk, imgs):
                _check_size(im.shape[:2], expected or imgs[0].shape[:2], f"image {p}")
            yield np.stack(imgs), f"images under {chunk[0].parent}"

    def arrays() -> Iterator[tuple[np.ndarray, str]]:
        if isinstance(source, torch.Tensor):
            yield _as_uint8_nhwc(source.detach().cpu().numpy(), "image tensor"), "image tensor"
        elif isinstance(source, np.ndarray):
            yield _as_uint8_nhwc(source, "image array"), "image array"
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source).expanduser()
            if path.is_dir():
                yield from _folder_batches(_folder_files(path))
            elif path.is_file() and path.suffix.lower() == ".npz":
                yield _npz_images(path), str(path)
            elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield from _folder_batches([path])
            else:
                raise MissingFileError(f"image source {path} not found (or not a folder / .npz); give an image "
                                       "folder, an .npz of uint8 images or a list of .npz shards")
        elif isinstance(source, Sequence):
            for item in source:
                path = Path(item).expanduser()
                if not path.is_file():
                    raise MissingFileError(f"image shard {path} not found; check the list of .npz shards")
                yield _npz_images(path), str(path)
        else:
            raise ConfigError(f"unsupported image source {type(source).__name__}; give a folder, an .npz, a list "
                              "of .npz shards or a uint8 array")

    first_hw = None
    for arr, what in arrays():
        if arr.shape[0] == 0:
            continue
        if first_hw is None:
            first_hw = tuple(arr.shape[1:3])
        _check_size(arr.shape[1:3], expected or first_hw, what)
        for start in range(0, arr.shape[0], batch_size):
            stop = start + batch_size if remaining is None else min(start + batch_size, start + remaining)
            batch = arr[start:stop]
            if remaining is not None:
                remaining -= batch.shape[0]
            yield batch
            if remaining == 0:
                return
    if remaining is not None and remaining > 0:
        raise ConfigError(f"the image source holds {num_images - remaining} images but {num_images} were asked for; "
                          "lower num_images or add images")


def compute_reference_stats(source, feature_fn: Callable, *, batch_size: int = 250,
                            image_size: int | tuple[int, int] | None = None, num_images: int | None = None,
                            out_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean / covariance (float64) of ``feature_fn`` features over the images of ``source``.

    ``feature_fn`` maps uint8 ``[b, H, W, C]`` to features ``[b, d]`` (e.g.
    :class:`~ld3_cli.metrics.inception.InceptionFeatures` or
    :func:`~ld3_cli.metrics.distances.pixel_features`).  Exactly the images of the source
    (or its first ``num_images``) are used.  With ``out_path`` the result is also saved.
    """
    acc = StatsAccumulator()
    for batch in iter_image_batches(source, batch_size=batch_size, image_size=image_size, num_images=num_images):
        acc.add(feature_fn(batch))
    mu, sigma = acc.stats()
    if out_path is not None:
        save_reference_stats(out_path, mu, sigma)
    return mu, sigma
