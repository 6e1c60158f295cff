"""Which images a ``dataset`` config stands for (the one place that dispatches on ``dataset.kind``).

* embedded datasets (``mnist5k``): uint8 images in memory, with no file to fetch;
* ``image_folder``: png/jpg images under ``dataset.path``;
* every other dataset (cifar10, ffhq64, ...): no images here -- its FID reference statistics are
  downloaded (``dataset.fid_ref_url``) or computed from images the user gives.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ConfigError, MissingFileError
from .images import count_images


def _mnist5k() -> np.ndarray:
    from .mnist5k import load_mnist5k_uint8

    return load_mnist5k_uint8()


# kind -> (what it is, uint8 [N, H, W, C] loader, image shape [C, H, W])
EMBEDDED: dict[str, tuple[str, Callable[[], np.ndarray], tuple[int, int, int]]] = {
    "mnist5k": ("the MNIST-5k digits", _mnist5k, (1, 28, 28)),
}


@dataclass
class DatasetImages:
    """The images of a dataset: ``source`` for :func:`~ld3_cli.data.images.iter_image_batches`."""

    source: Any          # a uint8 array [N, H, W, C] (embedded datasets) or a folder
    description: str     # for messages: "the MNIST-5k digits (dataset mnist5k)"
    count: int           # how many (0 when unknown)


def embedded_images(dataset_cfg) -> Optional[tuple[np.ndarray, tuple[int, int, int]]]:
    """``(uint8 [N, H, W, C] images, image shape [C, H, W])`` of an embedded dataset; None for others."""
    entry = EMBEDDED.get(str(dataset_cfg.get("kind")))
    return None if entry is None else (entry[1](), entry[2])


def dataset_images(dataset_cfg) -> DatasetImages:
    """The images of the dataset config; ConfigError / MissingFileError (naming the fix) when there are none."""
    kind, name = str(dataset_cfg.get("kind")), dataset_cfg.get("name")
    if kind in EMBEDDED:
        what, load, _ = EMBEDDED[kind]
        images = load()
        return DatasetImages(images, f"{what} (dataset {kind})", len(images))
    if kind == "image_folder":
        folder = dataset_cfg.get("path")
        if folder in (None, "", "???"):
            raise ConfigError("dataset=image_folder needs the folder: add dataset.path=/your/images "
                              "(or give fid_ref.source=/your/images)")
        path = Path(str(folder)).expanduser()
        if not path.is_dir():
            raise MissingFileError(f"dataset.path {path} is not a folder; point dataset.path at your image "
                                   "folder (png/jpg)")
        return DatasetImages(path, f"the images under {path} (dataset {name})", count_images(path))
    url = dataset_cfg.get("fid_ref_url")
    hint = f"download its statistics from {url}, or " if url else ""
    raise ConfigError(f"dataset {name} (kind {kind}) has no images here to compute statistics from; "
                      f"{hint}give fid_ref.source=/path/to/images (a folder or an .npz of uint8 images)")
