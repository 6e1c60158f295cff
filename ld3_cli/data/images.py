"""Image sources: folders of png/jpg, ``.npz`` files of uint8 images, lists of ``.npz`` shards, arrays.

:func:`iter_image_batches` reads any of them as uint8 ``[b, H, W, C]`` batches: a folder is
searched recursively and sorted by path, its images converted to RGB as pytorch-fid does; an
``.npz`` holds uint8 ``[N, H, W, C]`` under key ``x``, ``images`` or ``arr_0``; an in-memory
uint8 array / tensor is taken as it is.  :func:`count_images` counts without reading them.
"""
from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, MissingFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_IMAGE_KEYS = ("x", "images", "arr_0")


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
    first_hw = None
    for arr, what in _arrays(source, batch_size, expected):
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


def _arrays(source, batch_size: int, expected) -> Iterator[tuple[np.ndarray, str]]:
    """``(uint8 [m, H, W, C] images, what they are)`` pieces of ``source``, in order."""
    if isinstance(source, torch.Tensor):
        yield _as_uint8_nhwc(source.detach().cpu().numpy(), "image tensor"), "image tensor"
    elif isinstance(source, np.ndarray):
        yield _as_uint8_nhwc(source, "image array"), "image array"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            yield from _folder_batches(_folder_files(path), batch_size, expected)
        elif path.is_file() and path.suffix.lower() == ".npz":
            yield _npz_images(path), str(path)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield from _folder_batches([path], batch_size, expected)
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


def _folder_batches(files: list[Path], batch_size: int, expected) -> Iterator[tuple[np.ndarray, str]]:
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        imgs = [_read_image(p) for p in chunk]
        for p, im in zip(chunk, imgs):
            _check_size(im.shape[:2], expected or imgs[0].shape[:2], f"image {p}")
        yield np.stack(imgs), f"images under {chunk[0].parent}"


def count_images(path: Path) -> int:
    """Images in a folder (png/jpg, recursive) or an ``.npz`` (read from the array header); 0 if unknown."""
    path = Path(path)
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for key in NPZ_IMAGE_KEYS:
                if f"{key}.npy" in names:
                    with z.open(f"{key}.npy") as f:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape = read(f)[0]
                        return int(shape[0]) if shape else 0
    except (OSError, ValueError, zipfile.BadZipFile):
        pass
    return 0
