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

import torch

from ..errors import ConfigError
from ..metrics.fid import fid, fid_reference
from ..metrics.pixel_fd import pixel_statistics
from ..metrics.suite import DETECTORS, TABLE_METRICS, metric_suite
from ..metrics.table import format_table
from ..metrics.teacher_distances import HELDOUT_METRICS, teacher_distances
from ..store import Artifact, to_plain
from ..store.results import append_results, learned_schedule_name
from ..store.shards import iter_images
from .artifacts import heldout_teacher_artifact, learned_schedule, samples_artifact, schedule_for
from .context import StageContext
from .inference import student_images
from .keys import eval_fields, reference_identity
from .references import dataset_reference, exact_reference, noise_floor

log = logging.getLogger("ld3")
KIND = "eval"


def suite(ctx: StageContext) -> str:
    """``fid`` or ``fd_pixels`` for this config (``eval.metrics``, ``auto`` resolved for the model's images)."""
    return metric_suite(str(ctx.cfg.eval.metrics), lambda: ctx.model.image_shape, bool(ctx.cfg.dataset.get("fid_ref")))


def check_inputs(ctx: StageContext) -> None:
    """Validate what the metrics read (metric choice, FID reference and weights) before anything is sampled."""
    if suite(ctx) == "fid":
        from ..metrics.inception import resolve_inception_weights

        fid_reference(ctx.cfg.dataset.get("fid_ref"), ctx.cfg.dataset.get("fid_ref_url"))
        resolve_inception_weights(ctx.cfg.eval.inception_weights)


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
    samples = samples_artifact(ctx, name)
    kind = suite(ctx)
    held_key = heldout_teacher_artifact(ctx).key
    desc = {"kind": kind, "heldout_teacher": held_key, "exact_n": int(ctx.cfg.eval.exact_n),
            "ref": reference_identity(ctx.cfg.dataset.get("fid_ref")) if kind == "fid" else ctx.cfg.dataset.name,
            "detector": DETECTORS[kind]}

    def measure() -> dict:
        metrics = {**heldout_distances(ctx, name), **sample_metrics(ctx, kind, samples)}
        metrics = {k: float(v) for k, v in metrics.items()}
        return {"files": {"metrics.json": json.dumps(to_plain(metrics), indent=2)},
                "info": {"metrics": metrics, "schedule": name, "n": samples.manifest["info"]["n"],
                         "counts": {k: int(ctx.cfg.eval.heldout_n) if k in HELDOUT_METRICS else
                                    int(samples.manifest["info"]["n"]) for k in metrics}},
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
    trained = {}  # the learned schedule's key and loss (baselines: none)
    for name in list(ctx.cfg.eval.compare):
        try:
            metrics, art = evaluate_schedule(ctx, name)
        except ConfigError as e:
            if name == "ld3":
                raise
            log.warning("skipping %s: %s", name, e)
            continue
        table.append({"schedule": name, "nfe": ctx.nfe, **metrics})
        if name == "ld3":
            sched = learned_schedule(ctx)
            trained = {"schedule_key": sched.key, "loss": sched.manifest["info"].get("loss", ""),
                       "train_seed": ctx.settings.train.seed, "learn": ",".join(ctx.settings.learn),
                       "schedule": learned_schedule_name(ctx.settings.learn)}
        counts = art.manifest["info"].get("counts", {})
        csv_rows += [{"date": date, "model": ctx.model_cfg.get("name"), "dataset": ctx.cfg.dataset.name,
                      "model_key": ctx.model_key, "solver": ctx.solver_variant, "order": order, "nfe": ctx.nfe,
                      "schedule": name, "metric": metric,
                      "value": f"{value:.6g}", "n": counts.get(metric, art.manifest["info"]["n"]),
                      "samples_key": art.config["samples"], "eval_key": art.key,
                      **(trained if name == "ld3" else {}), "detector": art.config["metrics"]["detector"]}
                     for metric, value in metrics.items()]
    _print_table(ctx, table, order)
    path = append_results(ctx.store, csv_rows)
    print(f"results appended to {path} (and results.md)")
    if any(math.isnan(r.get("rmse", 0.0)) for r in table):
        log.warning("some metrics are NaN")
    return table


def _print_table(ctx: StageContext, table: list[dict], order) -> None:
    columns = [m for m in TABLE_METRICS if any(m in r for r in table)]
    floor = noise_floor(ctx, set(columns))
    # with exact samples, fd_exact is the solver error and fd_data mostly the model's mismatch: not a ranking
    unranked = frozenset({"fd_data"}) if "fd_exact" in columns else frozenset()
    print()
    afs = ", analytic first step" if ctx.analytic_first else ""
    print(f"{ctx.model_cfg.get('name')} / {ctx.cfg.dataset.name}: {ctx.solver_name} (order {order}{afs}) "
          f"NFE {ctx.nfe}, n = {int(ctx.cfg.sample.n)}; held-out teacher distances on "
          f"{int(ctx.cfg.eval.heldout_n)} noises")
    print(format_table(table, columns, unranked))
    if "fd_exact" in columns or "fd_data" in columns:
        exact = f"{int(ctx.cfg.eval.exact_n)} exact model samples" if "fd_exact" in columns else ""
        print(f"fd_* = Frechet distance in pixel space (not FID); fd_exact vs {exact or 'exact model samples'}, "
              "fd_data vs the dataset.  * = best")
    for line in floor_lines(floor, int(ctx.cfg.sample.n)):
        print(line)


def floor_lines(floor: dict, n: int) -> list[str]:
    """The lines under the table that state each metric's noise floor (:func:`.references.noise_floor`)."""
    parts = [f"{m} {floor[m]:.2f}" for m in ("fd_exact", "fd_data") if m in floor]
    if parts:
        parts = [", ".join(parts) + f" ({n} exact samples)"]
    check = floor.get("teacher_check")
    if check:
        psnr = 20 * math.log10(2.0 / floor["rmse"]) if floor["rmse"] > 0 else math.inf
        parts.append(f"rmse {floor['rmse']:.1e} (psnr {psnr:.0f} dB), the teacher's own error (RMSE to a "
                     f"{check['nfe_check']}-NFE teacher on {check['n']} noises)")
    if not parts:
        return []
    lines = [f"noise floor at n = {n} (what an exact solver scores; a gap below it separates nothing): "
             + "; ".join(parts)]
    if "fd_data" in floor and "fd_exact" in floor:
        lines.append(f"fd_data is not starred: exact samples score {floor['fd_data']:.2f} against the dataset, so it "
                     "measures the model's mismatch to the data, not solver error")
    return lines
