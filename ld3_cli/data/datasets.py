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
from .mnist5k import SHAPE as MNIST_SHAPE
from .mnist5k import load_mnist5k_uint8


@dataclass(frozen=True)
class EmbeddedDataset:
    """A dataset shipped with ld3's dependencies: no file to fetch."""

    description: str                     # "the MNIST-5k digits"
    load: Callable[[], np.ndarray]       # -> uint8 [N, H, W, C]
    image_shape: tuple[int, int, int]    # (C, H, W)


EMBEDDED = {"mnist5k": EmbeddedDataset("the MNIST-5k digits", load_mnist5k_uint8, MNIST_SHAPE)}


@dataclass
class DatasetImages:
    """The images of a dataset: ``source`` for :func:`~ld3_cli.data.images.iter_image_batches`."""

    source: Any          # a uint8 array [N, H, W, C] (embedded datasets) or a folder
    description: str     # for messages: "the MNIST-5k digits (dataset mnist5k)"
    count: int           # how many (0 when unknown)


def dataset_channels(dataset_cfg) -> int:
    """Image channels of a dataset config (plain data): an embedded dataset's own, ``channels`` when the config
    gives it, else 3 (every other dataset ld3 knows is RGB)."""
    embedded = embedded_dataset(dataset_cfg)
    if embedded is not None:
        return int(embedded.image_shape[0])
    return int(dataset_cfg.get("channels") or 3)


def embedded_dataset(dataset_cfg) -> Optional[EmbeddedDataset]:
    """The embedded dataset a dataset config (plain data) names, or None."""
    return EMBEDDED.get(str(dataset_cfg.get("kind")))


def dataset_images(dataset_cfg) -> DatasetImages:
    """The images of a dataset config (plain data; ``???`` = unset); ConfigError / MissingFileError (naming
    the fix) when there are none here."""
    kind, name = str(dataset_cfg.get("kind")), dataset_cfg.get("name")
    if kind in EMBEDDED:
        images = EMBEDDED[kind].load()
        return DatasetImages(images, f"{EMBEDDED[kind].description} (dataset {kind})", len(images))
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
