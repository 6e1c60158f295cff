"""``ld3 fid-ref``: FID reference statistics (``mu``, ``sigma`` of Inception pool3 features) from images.

``fid_ref.source`` is ``dataset`` (the current dataset config: the MNIST-5k digits for
``mnist5k``, ``dataset.path`` for ``image_folder``), an image folder (png/jpg, recursive) or an
``.npz`` of uint8 images ``[N, H, W, C]`` (key ``x``, ``images`` or ``arr_0``).  Features come
from pytorch-fid's Inception v3 (:class:`~ld3_cli.metrics.InceptionFeatures`; weights
``eval.inception_weights`` or the torch hub cache -- never downloaded), computed in batches of
``eval.fid_batch_size``; 1-channel images are repeated to RGB.  The statistics go to
``fid_ref.out`` (default ``dataset.fid_ref``, else ``<cache>/refs/<name>.npz``) as EDM's npz
layout (float64 ``mu [2048]``, ``sigma [2048, 2048]``), written atomically; an existing file is
only replaced with ``fid_ref.overwrite=true``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..data.datasets import dataset_images
from ..data.images import count_images
from ..errors import ConfigError, MissingFileError
from ..store import to_plain
from .context import StageContext

log = logging.getLogger("ld3")
DATASET = "dataset"


def resolve_source(ctx: StageContext) -> tuple[Any, str, str, int]:
    """``(source for compute_reference_stats, description, default file stem, image count or 0)``."""
    spec = ctx.cfg.fid_ref.get("source", DATASET)
    if spec in (None, "", DATASET):
        found = dataset_images(to_plain(ctx.cfg.dataset))
        return found.source, found.description, str(ctx.cfg.dataset.name), found.count
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise MissingFileError(f"fid_ref.source {path} not found; give an image folder, an .npz of uint8 images "
                               "[N, H, W, C] (key x), or fid_ref.source=dataset")
    if path.is_dir():
        return path, f"the images under {path}", path.name, count_images(path)
    if path.suffix.lower() != ".npz":
        raise ConfigError(f"fid_ref.source {path} is neither a folder nor an .npz; give an image folder or an .npz "
                          "of uint8 images [N, H, W, C] (key x)")
    return path, f"the images in {path}", path.stem, count_images(path)


def resolve_out(ctx: StageContext, stem: str) -> Path:
    cfg = ctx.cfg.fid_ref
    out = cfg.get("out") or ctx.cfg.dataset.get("fid_ref")
    path = Path(str(out)).expanduser() if out else ctx.store.root / "refs" / f"{stem}.npz"
    if path.suffix.lower() != ".npz":
        raise ConfigError(f"fid_ref.out={path} must end in .npz (e.g. fid_ref.out=refs/mydata.npz)")
    if path.exists() and not bool(cfg.get("overwrite", False)):
        raise ConfigError(f"{path} already exists; pass fid_ref.overwrite=true to replace it, or write elsewhere "
                          "with fid_ref.out=/path/to/new.npz")
    return path


def _image_size(spec):
    if spec is None:
        return None
    if isinstance(spec, (int, str)):
        return int(spec)
    vals = [int(v) for v in spec]
    if len(vals) != 2:
        raise ConfigError(f"fid_ref.image_size must be an int or [H, W], got {list(spec)}")
    return tuple(vals)


def run(ctx: StageContext) -> dict:
    """Stage entry point: returns ``{"path", "mu", "sigma", "n"}``."""
    from ..metrics import InceptionFeatures, compute_reference_stats

    cfg = ctx.cfg.fid_ref
    n = cfg.get("n")
    n = None if n is None else int(n)
    if n is not None and n < 1:
        raise ConfigError(f"fid_ref.n must be >= 1 (or null for all images), got {n}")
    source, desc, stem, count = resolve_source(ctx)
    out = resolve_out(ctx, stem)
    batch_size = int(ctx.cfg.eval.fid_batch_size)
    feats = InceptionFeatures(weights_path=ctx.cfg.eval.get("inception_weights"), device=ctx.device,
                              batch_size=batch_size)
    bar = ctx.progress(n if n is not None else count, "FID reference features", "img")
    seen = 0

    def features(batch):
        nonlocal seen
        seen += len(batch)
        bar.update(len(batch))
        return feats(batch)

    log.info("computing FID reference statistics of %s on %s", desc, ctx.device)
    try:
        mu, sigma = compute_reference_stats(source, features, batch_size=batch_size,
                                            image_size=_image_size(cfg.get("image_size")), num_images=n,
                                            out_path=out)
    finally:
        bar.close()
    print(f"FID reference statistics of {desc}: {seen} images, mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)} "
          "(pytorch-fid Inception pool3)")
    print(f"fid-ref: {out}")
    return {"path": out, "mu": mu, "sigma": sigma, "n": seen}
