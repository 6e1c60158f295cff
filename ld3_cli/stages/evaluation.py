"""Scoring schedules (``ld3 eval``, ``ld3 run``): the learned schedule and the baselines, one table.

For each schedule in ``eval.compare`` (sampling whatever is missing) the metric suite
``eval.metrics`` (:mod:`ld3_cli.metrics.suite`: ``fid`` against ``dataset.fid_ref``, or the pixel
Frechet distances ``fd_exact`` / ``fd_data``) plus the teacher distances on ``eval.heldout_n``
held-out noises (seeds ``sample.seed_offset + i``, never used in training;
:mod:`ld3_cli.metrics.teacher_distances`).  Each (samples, metrics) result is an ``eval`` artifact
(``metrics.json``); the pixel statistics of the references are ``refs`` artifacts, computed once.
Every run prints one table and appends its rows to ``<cache>/results.csv`` (:mod:`ld3_cli.store.results`).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from typing import Optional

import torch

from ..data.datasets import embedded_dataset
from ..errors import ConfigError
from ..metrics.fid import fid, fid_reference
from ..metrics.frechet import FrechetReference
from ..metrics.pixel_fd import exact_sample_images, pixel_statistics
from ..metrics.suite import DETECTORS, TABLE_METRICS, metric_suite
from ..metrics.table import format_table
from ..metrics.teacher_distances import teacher_distances
from ..store import Artifact, to_plain
from ..store.artifact import TENSORS
from ..store.results import append_results
from ..store.shards import iter_images
from .artifacts import heldout_teacher_artifact, samples_artifact, schedule_for
from .context import StageContext
from .inference import student_images
from .keys import eval_fields, reference_identity

log = logging.getLogger("ld3")
KIND = "eval"
# (refs tensors file, its mtime and size) -> its statistics: each reference's covariance root once per process
_REFERENCES: dict[tuple, FrechetReference] = {}


def suite(ctx: StageContext) -> str:
    """``fid`` or ``fd_pixels`` for this config (``eval.metrics``, ``auto`` resolved for the model's images)."""
    return metric_suite(str(ctx.cfg.eval.metrics), lambda: ctx.model.image_shape, bool(ctx.cfg.dataset.get("fid_ref")))


def check_inputs(ctx: StageContext) -> None:
    """Validate what the metrics read (metric choice, FID reference and weights) before anything is sampled."""
    if suite(ctx) == "fid":
        from ..metrics.inception import resolve_inception_weights

        fid_reference(ctx.cfg.dataset.get("fid_ref"), ctx.cfg.dataset.get("fid_ref_url"))
        resolve_inception_weights(ctx.cfg.eval.inception_weights)


# -- reference statistics (pixels) ----------------------------------------------------------------
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


# -- one schedule ----------------------------------------------------------------------------------
def heldout_distances(ctx: StageContext, name: str) -> dict:
    """Teacher distances of schedule ``name`` on the held-out noises."""
    n, off = int(ctx.cfg.eval.heldout_n), int(ctx.cfg.sample.seed_offset)
    held = heldout_teacher_artifact(ctx)
    target = held.tensors({"images": (n, None, None, None)})["images"].to(ctx.device).float()
    sampler, _ = schedule_for(ctx, name)
    bs = max(1, int(ctx.cfg.sample.batch_size))
    seeds = list(range(off, off + n))
    out = torch.cat([student_images(ctx, seeds[i:i + bs], sampler).float() for i in range(0, n, bs)])
    return teacher_distances(out, target, bs)


def sample_metrics(ctx: StageContext, kind: str, samples: Artifact) -> dict:
    """The suite's metrics of a samples artifact: ``fid``, or ``fd_exact`` / ``fd_data``."""
    if kind == "fid":
        from ..metrics import InceptionFeatures

        batch = int(ctx.cfg.eval.fid_batch_size)
        features = InceptionFeatures(weights_path=ctx.cfg.eval.inception_weights, device=ctx.device, batch_size=batch)
        bar = ctx.progress(int(samples.manifest["info"]["n"]), "FID features", "img")
        try:
            ref = fid_reference(ctx.cfg.dataset.get("fid_ref"), ctx.cfg.dataset.get("fid_ref_url"))
            return {"fid": fid(iter_images(samples, batch=batch), ref, features, ctx.device, bar.update)}
        finally:
            bar.close()
    mu, sigma, _ = pixel_statistics(iter_images(samples))
    res = {}
    for metric, ref in (("fd_exact", exact_reference(ctx)), ("fd_data", dataset_reference(ctx))):
        if ref is not None:
            res[metric] = ref.distance(mu, sigma)
    return res


def evaluate_schedule(ctx: StageContext, name: str) -> tuple[dict, Artifact]:
    """Metrics for one schedule (an eval artifact, made once)."""
    held_key = heldout_teacher_artifact(ctx).key  # first: the sample grids reuse its images
    samples = samples_artifact(ctx, name)
    kind = suite(ctx)
    desc = {"kind": kind, "heldout_teacher": held_key, "exact_n": int(ctx.cfg.eval.exact_n),
            "ref": reference_identity(ctx.cfg.dataset.get("fid_ref")) if kind == "fid" else ctx.cfg.dataset.name,
            "detector": DETECTORS[kind]}

    def measure() -> dict:
        metrics = {**heldout_distances(ctx, name), **sample_metrics(ctx, kind, samples)}
        metrics = {k: float(v) for k, v in metrics.items()}
        return {"files": {"metrics.json": json.dumps(to_plain(metrics), indent=2)},
                "info": {"metrics": metrics, "schedule": name, "n": samples.manifest["info"]["n"]},
                "inputs": {"samples": samples.key, "heldout_teacher": held_key}}

    art = ctx.store.get_or_make(ctx.model_key, KIND, eval_fields(samples.key, desc), measure,
                                producer=ctx.command("eval"))
    return art.json("metrics.json"), art


# -- every schedule ------------------------------------------------------------------------------------
def evaluate(ctx: StageContext) -> list[dict]:
    """Evaluate every schedule in ``eval.compare`` for this solver and NFE; print the table, append the results."""
    table, csv_rows = [], []
    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    order = ctx.solver_options.get("order", "")
    for name in list(ctx.cfg.eval.compare):
        try:
            metrics, art = evaluate_schedule(ctx, name)
        except ConfigError as e:
            if name == "ld3":
                raise
            log.warning("skipping %s: %s", name, e)
            continue
        table.append({"schedule": name, "nfe": ctx.nfe, **metrics})
        csv_rows += [{"date": date, "model": ctx.model_cfg.get("name"), "dataset": ctx.cfg.dataset.name,
                      "solver": ctx.solver_name, "order": order, "nfe": ctx.nfe, "schedule": name, "metric": metric,
                      "value": f"{value:.6g}", "n": art.manifest["info"]["n"], "samples_key": art.config["samples"],
                      "eval_key": art.key, "schedule_key": art.config.get("schedule_key", ""),
                      "detector": art.config["metrics"]["detector"]} for metric, value in metrics.items()]
    _print_table(ctx, table, order)
    path = append_results(ctx.store, csv_rows)
    print(f"results appended to {path} (and results.md)")
    if any(math.isnan(r.get("rmse", 0.0)) for r in table):
        log.warning("some metrics are NaN")
    return table


def _print_table(ctx: StageContext, table: list[dict], order) -> None:
    print()
    print(f"{ctx.model_cfg.get('name')} / {ctx.cfg.dataset.name}: {ctx.solver_name} (order {order}) "
          f"NFE {ctx.nfe}, n = {int(ctx.cfg.sample.n)}; held-out teacher distances on "
          f"{int(ctx.cfg.eval.heldout_n)} noises")
    print(format_table(table, [m for m in TABLE_METRICS if any(m in r for r in table)]))
    if any("fd_exact" in r or "fd_data" in r for r in table):
        print("fd_* = Frechet distance in pixel space (not FID); fd_exact vs exact model samples, fd_data vs the "
              "dataset.  * = best")
