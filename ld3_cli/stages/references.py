"""What the pixel Frechet distances compare against, and the noise floor printed under eval's table.

* :func:`exact_reference`: statistics of ``eval.exact_n`` exact samples of the model (``fd_exact``);
* :func:`dataset_reference`: statistics of the dataset's images (``fd_data``);
* :func:`noise_floor`: what an *exact* solver scores at this sample count -- the value no schedule
  can beat on average, so a gap between two schedules smaller than it is no evidence of anything.

Statistics are ``refs`` artifacts in the store (computed once); in a process each reference is one
:class:`~ld3_cli.metrics.frechet.FrechetReference`, so its covariance root is computed once for all
the schedules scored against it.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch

from ..data.datasets import embedded_dataset
from ..data.seeds import SEED_SHIFTS
from ..metrics.frechet import FrechetReference
from ..metrics.pixel_fd import exact_sample_images, pixel_statistics
from ..store import to_plain
from ..store.artifact import TENSORS
from .artifacts import heldout_teacher_artifact
from .context import StageContext

log = logging.getLogger("ld3")
# (refs tensors file, its mtime and size) -> its statistics
_REFERENCES: dict[tuple, FrechetReference] = {}


def _pixel_reference(ctx: StageContext, fields: dict, batches) -> FrechetReference:
    """Pixel statistics of ``batches()`` from the store (computed once), as a reference for Frechet distances."""
    def compute() -> dict:
        mu, sigma, n = pixel_statistics(batches())
        return {"tensors": {"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, "info": {"n": n}}

    d = math.prod(ctx.model.image_shape)
    art = ctx.store.get_or_make(ctx.model_key, "refs", fields, compute, producer=ctx.command("eval"))
    st = (art.path / TENSORS).stat()
    version = (str(art.path), st.st_mtime_ns, st.st_size)
    if version not in _REFERENCES:
        t = art.tensors({"mu": (d,), "sigma": (d, d)})
        if len(_REFERENCES) >= 4:
            _REFERENCES.clear()
        _REFERENCES[version] = FrechetReference(t["mu"].numpy(), t["sigma"].numpy())
    return _REFERENCES[version]


def exact_reference(ctx: StageContext) -> Optional[FrechetReference]:
    """Statistics of ``eval.exact_n`` exact samples of the model (None when it cannot draw them)."""
    if not hasattr(ctx.model, "sample_exact"):
        return None
    n, seed = int(ctx.cfg.eval.exact_n), int(ctx.cfg.seed)
    return _pixel_reference(ctx, {"kind": "exact_pixels", "n": n, "seed": seed},
                            lambda: exact_sample_images(ctx.model, n, seed))


def dataset_reference(ctx: StageContext) -> Optional[FrechetReference]:
    """Statistics of the dataset's images, for embedded datasets of the model's image shape (else None)."""
    dataset = embedded_dataset(to_plain(ctx.cfg.dataset))
    if dataset is None:
        return None
    if tuple(ctx.model.image_shape) != dataset.image_shape:
        log.info("fd_data skipped: the model's images %s are not the dataset's %s", tuple(ctx.model.image_shape),
                 dataset.image_shape)
        return None
    fields = {"kind": "dataset_pixels", "dataset": str(ctx.cfg.dataset.kind)}
    return _pixel_reference(ctx, fields, lambda: [dataset.load()])


def noise_floor(ctx: StageContext, metrics: set) -> dict:
    """What an exact solver scores in ``metrics`` at this config's sample count ``sample.n``.

    * ``fd_exact`` / ``fd_data``: the distances of ``sample.n`` exact samples, drawn apart from the
      reference set (another seed), to the exact reference and to the dataset.  It is a finite-sample
      bias (for the mixture ~3970 (1/n + 1/exact_n), docs/benchmarks.md): every schedule's value
      carries it, and a gap smaller than it separates nothing.  For ``fd_data`` it is the model's
      own mismatch to the data.
    * ``rmse``: the held-out teacher's own error (its RMSE to a teacher of twice the NFE), which
      every teacher distance also carries.

    Only the entries that apply (models that draw exact samples; a teacher with its accuracy check).
    """
    floor: dict = {}
    if metrics & {"fd_exact", "fd_data"} and hasattr(ctx.model, "sample_exact"):
        n, seed = int(ctx.cfg.sample.n), int(ctx.cfg.seed)
        fields = {"kind": "exact_pixels", "n": n, "seed": seed, "draw": "noise_floor"}
        exact = _pixel_reference(ctx, fields,
                                 lambda: exact_sample_images(ctx.model, n, seed, SEED_SHIFTS.noise_floor))
        for metric, ref in (("fd_exact", exact_reference(ctx)), ("fd_data", dataset_reference(ctx))):
            if metric in metrics and ref is not None:
                floor[metric] = ref.distance(exact.mu, exact.sigma)
    check = heldout_teacher_artifact(ctx).manifest["info"].get("teacher_check") or {}
    if "rmse" in metrics and "rmse" in check:
        floor["rmse"] = float(check["rmse"])
        floor["teacher_check"] = check
    return floor
