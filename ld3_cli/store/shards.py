"""Image shards: uint8 images with their seeds, ``shard_00000.npz``, ``shard_00001.npz``, ...

Layout (EDM's per-image seeds): image i of an n-image set has seed ``seed_offset + i``; shard k
holds images ``[k * size, min((k + 1) * size, n))`` exactly (no padding rows) as ``images``
uint8 ``[m, H, W, C]`` and ``seeds`` int64 ``[m]``.  Each shard is written atomically, so a
producer that stops resumes at the first missing one; every shard is checked when it is read.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import CorruptArtifactError
from .artifact import Artifact
from .files import atomic_write_bytes


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.npz"


@dataclass(frozen=True)
class ShardLayout:
    """``n`` images in shards of ``size``, image i with seed ``offset + i``."""

    n: int
    size: int
    offset: int = 0

    @property
    def count(self) -> int:
        """How many shards."""
        return (self.n + self.size - 1) // self.size

    def seeds(self, k: int) -> range:
        """The seeds of shard ``k``, in order."""
        return range(self.offset + k * self.size, self.offset + min((k + 1) * self.size, self.n))

    def missing(self, directory: Path, shards=None) -> list[int]:
        """The shards (of ``shards``, default all) not yet written in ``directory``."""
        return [k for k in (range(self.count) if shards is None else shards)
                if not (Path(directory) / shard_name(k)).is_file()]


def write_shard(directory: Path, k: int, images: np.ndarray, seeds) -> None:
    """Write shard ``k`` (uint8 ``[m, H, W, C]`` images and their ``m`` seeds) atomically."""
    buf = io.BytesIO()
    np.savez(buf, images=images, seeds=np.asarray(list(seeds), dtype=np.int64))
    atomic_write_bytes(Path(directory) / shard_name(k), buf.getvalue())


def first_images(directory: Path, m: int) -> np.ndarray:
    """The first ``m`` images of shard 0 (for figures)."""
    with np.load(Path(directory) / shard_name(0), allow_pickle=False) as z:
        return z["images"][:m]


def iter_images(art: Artifact, batch: int = 1000) -> Iterator[np.ndarray]:
    """uint8 ``[b, H, W, C]`` batches over all shards of a samples artifact, in seed order.

    Every shard is checked before use: it must hold exactly its seeds' images (count and seeds from
    the artifact's config), as uint8 ``[k, H, W, C]`` of the one image shape (``info.image_shape``
    when recorded); anything else is a :class:`CorruptArtifactError` naming the rebuild command.
    """
    info, cfg = art.manifest["info"], art.config
    n = int(info["n"])
    layout = ShardLayout(n, int(cfg.get("shard_size", n)), int(cfg.get("seed_offset", 0)))
    rebuild = f"delete {art.path} and rerun `{art.rebuild}`"
    if int(info["shards"]) != layout.count:
        raise CorruptArtifactError(f"{art.path}: its manifest lists {info['shards']} shards, {n} images in shards of "
                                   f"{layout.size} need {layout.count}; {rebuild}")
    hwc = tuple(info["image_shape"]) if info.get("image_shape") else None
    for k in range(layout.count):
        imgs, hwc = _checked_shard(art.path / shard_name(k), np.asarray(layout.seeds(k)), hwc, rebuild)
        for i in range(0, len(imgs), batch):
            yield imgs[i:i + batch]


def _checked_shard(p: Path, want: np.ndarray, hwc, rebuild: str) -> tuple[np.ndarray, tuple]:
    """The images of shard ``p`` after checking them against the seeds ``want`` and the image shape ``hwc``."""
    try:
        with np.load(p, allow_pickle=False) as z:
            imgs, seeds = z["images"], z["seeds"]
    except Exception as e:  # noqa: BLE001 - zip / format errors of a damaged shard
        raise CorruptArtifactError(f"unreadable shard {p} ({type(e).__name__}: {e}); {rebuild}") from None
    hwc = hwc or tuple(imgs.shape[1:])
    if (imgs.dtype != np.uint8 or imgs.ndim != 4 or tuple(imgs.shape[1:]) != hwc or len(imgs) != len(want)
            or not np.array_equal(seeds, want)):
        raise CorruptArtifactError(f"shard {p} holds {imgs.dtype} images {list(imgs.shape)} (seeds "
                                   f"{_span(seeds)}), expected uint8 [{len(want)}, {', '.join(map(str, hwc))}] for "
                                   f"seeds {_span(want)}; {rebuild}")
    return imgs, hwc


def _span(seeds) -> str:
    seeds = np.asarray(seeds).reshape(-1)
    return f"{seeds[0]}..{seeds[-1]}" if seeds.size else "none"
