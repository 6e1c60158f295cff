"""``ld3 eval`` (alias ``evaluate-fid``): score the learned schedule and the baselines, one table.

For each schedule in ``eval.compare`` (sampling whatever is missing):

* ``fid`` (RGB datasets with reference statistics): pytorch-fid's Inception pool3 features of
  all ``sample.n`` images against ``dataset.fid_ref`` (EDM fid-refs or pytorch-fid npz).
* ``fd_pixels`` (small / non-RGB data such as the embedded MNIST-5k): the Frechet distance in
  pixel space -- never called FID -- against exact samples of the model's own distribution
  when the model can draw them (pure solver error; ``fd_exact``) and against the dataset
  images (``fd_data``).
* teacher distances on ``eval.heldout_n`` held-out noises (seeds ``sample.seed_offset + i``,
  never used in training): ``rmse`` (pooled over pixels, images in [-1, 1]), ``psnr`` (dB, mean
  over samples) and ``lpips`` (RGB, when its weights are present).

Each (samples, metrics) result is an ``eval`` artifact (``metrics.json``); every run prints one
table and appends its rows to ``<cache>/results.csv`` and regenerates ``<cache>/results.md``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import logging
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError, MissingArtifactError
from ..store import Artifact, atomic_write_text, make_key, to_plain
from .context import StageContext
from .keys import eval_fields, reference_identity
from .sample import iter_images, samples_artifact, schedule_for, student_images
from .teacher_sample import teacher_artifact

log = logging.getLogger("ld3")
KIND = "eval"
RESULT_COLUMNS = ["date", "model", "dataset", "solver", "order", "nfe", "schedule", "metric", "value", "n",
                  "samples_key", "eval_key", "schedule_key", "detector"]


def metric_kind(ctx: StageContext) -> str:
    m = str(ctx.cfg.eval.metrics)
    if m != "auto":
        if m not in ("fid", "fd_pixels"):
            raise ConfigError(f"eval.metrics must be auto, fid or fd_pixels; got '{m}'")
        return m
    rgb = tuple(ctx.model.image_shape)[0] == 3
    return "fid" if (rgb and ctx.cfg.dataset.get("fid_ref")) else "fd_pixels"


# -- reference statistics ----------------------------------------------------------------------
def _pixel_stats(images_uint8_batches) -> tuple[np.ndarray, np.ndarray, int]:
    from ..metrics import StatsAccumulator

    acc = StatsAccumulator()
    for b in images_uint8_batches:
        acc.add(torch.from_numpy(b.reshape(len(b), -1).astype(np.float64) / 127.5 - 1.0))
    mu, sigma = acc.stats()
    return np.asarray(mu), np.asarray(sigma), acc.n


def _cached_stats(ctx: StageContext, fields: dict, compute) -> tuple[np.ndarray, np.ndarray]:
    """Pixel statistics (``mu [d]``, ``sigma [d, d]``, d = the model's pixels) from the store, computed once."""
    d = math.prod(ctx.model.image_shape)
    key = make_key(fields)
    store = ctx.store
    if not store.exists(ctx.model_key, "refs", key):
        with store.lock(ctx.model_key, "refs", key):
            if not store.exists(ctx.model_key, "refs", key):
                mu, sigma, n = compute()
                store.write(ctx.model_key, "refs", fields,
                            tensors={"mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}, info={"n": n},
                            command=ctx.command("eval"))
    t = store.open(ctx.model_key, "refs", key, producer=ctx.command("eval")).tensors({"mu": (d,), "sigma": (d, d)})
    return t["mu"].numpy(), t["sigma"].numpy()


def exact_stats(ctx: StageContext) -> Optional[tuple[np.ndarray, np.ndarray]]:
    model = ctx.model
    if not hasattr(model, "sample_exact"):
        return None
    n = int(ctx.cfg.eval.exact_n)
    fields = {"kind": "exact_pixels", "n": n, "seed": int(ctx.cfg.seed)}

    def compute():
        from .sample import to_uint8

        gen = torch.Generator().manual_seed(int(ctx.cfg.seed) + 12_345)
        batches = []
        for i in range(0, n, 1000):
            x0, _ = model.sample_exact(min(1000, n - i), generator=gen)
            batches.append(to_uint8(model.decode(x0)))
        return _pixel_stats(batches)

    return _cached_stats(ctx, fields, compute)


def dataset_stats(ctx: StageContext) -> Optional[tuple[np.ndarray, np.ndarray]]:
    ds = ctx.cfg.dataset
    if ds.kind != "mnist5k":
        return None
    from ..data.mnist5k import SHAPE

    if tuple(ctx.model.image_shape) != SHAPE:
        log.info("fd_data skipped: the model's images %s are not MNIST's %s", tuple(ctx.model.image_shape), SHAPE)
        return None
    fields = {"kind": "dataset_pixels", "dataset": "mnist5k"}

    def compute():
        from ..data.mnist5k import load_mnist5k_uint8

        return _pixel_stats([load_mnist5k_uint8()])

    return _cached_stats(ctx, fields, compute)


# -- metrics -------------------------------------------------------------------------------------
def teacher_distances(ctx: StageContext, sig, ev) -> tuple[dict, str]:
    from ..metrics import psnr

    n = int(ctx.cfg.eval.heldout_n)
    held = teacher_artifact(ctx, seed_start=int(ctx.cfg.sample.seed_offset), n=n)
    target = held.tensors({"images": (n, None, None, None)})["images"].to(ctx.device).float()
    seeds = list(range(int(ctx.cfg.sample.seed_offset), int(ctx.cfg.sample.seed_offset) + n))
    bs = max(1, int(ctx.cfg.sample.batch_size))
    out = torch.cat([student_images(ctx, seeds[i:i + bs], sig, ev).float() for i in range(0, n, bs)])
    res = {"rmse": float(((out - target) ** 2).mean().sqrt()), "psnr": float(psnr(out, target).mean())}
    if out.shape[1] == 3:
        from ..metrics import lpips_available

        if lpips_available("vgg"):
            from ..metrics import build_lpips

            net = build_lpips("vgg", device=ctx.device)
            with torch.no_grad():
                res["lpips"] = float(torch.cat([net(out[i:i + bs], target[i:i + bs]).flatten()
                                                for i in range(0, n, bs)]).mean())
    return res, held.key


def fid_reference(ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's FID reference statistics ``dataset.fid_ref``, validated (present, 2048-d, finite)."""
    ref_path = ctx.cfg.dataset.get("fid_ref")
    if not ref_path or not Path(str(ref_path)).is_file():
        url = ctx.cfg.dataset.get("fid_ref_url")
        raise MissingArtifactError(f"FID reference statistics not found at {ref_path}; "
                                   + (f"download {url} there" if url else "make them with `ld3 fid-ref ...`")
                                   + " (or set dataset.fid_ref=/path/to/stats.npz)")
    st = Path(str(ref_path)).stat()
    return _load_fid_reference(str(ref_path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _load_fid_reference(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read once per file version (eval checks the file first, then scores every schedule against it)."""
    from ..metrics import FEATURE_DIM, load_reference_stats

    return load_reference_stats(path, dims=FEATURE_DIM)


def check_inputs(ctx: StageContext) -> None:
    """Validate what the metrics read (metric choice, FID reference and weights) before anything is sampled."""
    if metric_kind(ctx) == "fid":
        from ..metrics.inception import resolve_inception_weights

        fid_reference(ctx)
        resolve_inception_weights(ctx.cfg.eval.inception_weights)


def fid_value(ctx: StageContext, samples: Artifact) -> dict:
    from ..metrics import InceptionFeatures, StatsAccumulator, frechet_distance

    mu_r, sig_r = fid_reference(ctx)
    feats = InceptionFeatures(weights_path=ctx.cfg.eval.inception_weights, device=ctx.device,
                              batch_size=int(ctx.cfg.eval.fid_batch_size))
    acc = StatsAccumulator(device=ctx.device)
    n = int(samples.manifest["info"]["n"])
    bar = ctx.progress(n, "FID features", "img")
    for b in iter_images(samples, batch=int(ctx.cfg.eval.fid_batch_size)):
        acc.add(feats(torch.from_numpy(b)))
        bar.update(len(b))
    bar.close()
    mu, sigma = acc.stats()
    return {"fid": frechet_distance(np.asarray(mu), np.asarray(sigma), mu_r, sig_r)}


def fd_values(ctx: StageContext, samples: Artifact) -> dict:
    from ..metrics import frechet_distance

    mu, sigma, n = _pixel_stats(iter_images(samples))
    res = {}
    ex = exact_stats(ctx)
    if ex is not None:
        res["fd_exact"] = frechet_distance(mu, sigma, *ex)
    ds = dataset_stats(ctx)
    if ds is not None:
        res["fd_data"] = frechet_distance(mu, sigma, *ds)
    return res


def evaluate_schedule(ctx: StageContext, name: str) -> tuple[dict, Artifact]:
    """Metrics for one schedule (cached as an eval artifact)."""
    samples = samples_artifact(ctx, name)
    kind = metric_kind(ctx)
    held_key = teacher_artifact(ctx, seed_start=int(ctx.cfg.sample.seed_offset), n=int(ctx.cfg.eval.heldout_n)).key
    desc = {"kind": kind, "heldout_teacher": held_key, "exact_n": int(ctx.cfg.eval.exact_n),
            "ref": reference_identity(ctx.cfg.dataset.get("fid_ref")) if kind == "fid" else ctx.cfg.dataset.name,
            "detector": "pytorch-fid-inception-v3-pool3" if kind == "fid" else "pixels"}
    fields = eval_fields(samples.key, desc)
    key = make_key(fields)
    store = ctx.store
    if store.exists(ctx.model_key, KIND, key):
        art = store.open(ctx.model_key, KIND, key, producer=ctx.command("eval"))
        return art.json("metrics.json"), art
    sig, ev, _ = schedule_for(ctx, name)
    metrics, _ = teacher_distances(ctx, sig, ev)
    metrics.update(fid_value(ctx, samples) if kind == "fid" else fd_values(ctx, samples))
    metrics = {k: float(v) for k, v in metrics.items()}
    art = store.write(ctx.model_key, KIND, fields, files={"metrics.json": _json(metrics)},
                      info={"metrics": metrics, "schedule": name, "n": samples.manifest["info"]["n"]},
                      inputs={"samples": samples.key, "heldout_teacher": held_key}, command=ctx.command("eval"))
    return metrics, art


def _json(d) -> str:
    import json

    return json.dumps(to_plain(d), indent=2)


# -- results table -----------------------------------------------------------------------------
def format_table(rows: list[dict], metrics: list[str]) -> str:
    head = ["schedule", "NFE"] + metrics
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    best = {m: min((r[m] for r in rows if m in r and m != "psnr"), default=None) for m in metrics}
    for r in rows:
        cells = [r["schedule"], str(r["nfe"])]
        for m in metrics:
            v = r.get(m)
            cell = "-" if v is None else (f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}")
            if v is not None and best.get(m) is not None and v == best[m]:
                cell += " *"
            cells.append(cell)
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def append_results(ctx: StageContext, rows: list[dict]) -> Path:
    """Append to ``<cache>/results.csv`` (locked) and regenerate ``results.md``."""
    root = ctx.store.root
    root.mkdir(parents=True, exist_ok=True)
    path = root / "results.csv"
    with ctx.store.lock("_results", "csv", "results"):
        existing = path.read_text() if path.is_file() else ""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS)
        if not existing:
            w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in RESULT_COLUMNS})
        atomic_write_text(path, existing + buf.getvalue())
        all_rows = list(csv.DictReader(io.StringIO(path.read_text())))
        md = ["| " + " | ".join(RESULT_COLUMNS[:10]) + " |", "|" + "---|" * 10]
        md += ["| " + " | ".join(str(r.get(k, "")) for k in RESULT_COLUMNS[:10]) + " |" for r in all_rows]
        atomic_write_text(root / "results.md", "\n".join(md) + "\n")
    return path


def run(ctx: StageContext) -> list[dict]:
    """Stage entry point: evaluate every schedule in ``eval.compare`` for this solver and NFE."""
    check_inputs(ctx)
    names = list(ctx.cfg.eval.compare)
    table, csv_rows = [], []
    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    order = ctx.solver_options.get("order", "")
    for name in names:
        try:
            metrics, art = evaluate_schedule(ctx, name)
        except ConfigError as e:
            if name == "ld3":
                raise
            log.warning("skipping %s: %s", name, e)
            continue
        table.append({"schedule": name, "nfe": ctx.nfe, **metrics})
        sched_key = art.config["samples"]
        for metric, value in metrics.items():
            csv_rows.append({"date": date, "model": ctx.model_cfg.get("name"), "dataset": ctx.cfg.dataset.name,
                             "solver": ctx.solver_name, "order": order, "nfe": ctx.nfe, "schedule": name,
                             "metric": metric, "value": f"{value:.6g}", "n": art.manifest["info"]["n"],
                             "samples_key": sched_key, "eval_key": art.key,
                             "schedule_key": art.config.get("schedule_key", ""),
                             "detector": art.config["metrics"]["detector"]})
    metric_names = [m for m in ("fid", "fd_exact", "fd_data", "rmse", "psnr", "lpips") if any(m in r for r in table)]
    title = (f"{ctx.model_cfg.get('name')} / {ctx.cfg.dataset.name}: {ctx.solver_name} (order {order}) "
             f"NFE {ctx.nfe}, n = {int(ctx.cfg.sample.n)}; held-out teacher distances on "
             f"{int(ctx.cfg.eval.heldout_n)} noises")
    print()
    print(title)
    print(format_table(table, metric_names))
    if any("fd_exact" in r or "fd_data" in r for r in table):
        print("fd_* = Frechet distance in pixel space (not FID); fd_exact vs exact model samples, fd_data vs the "
              "dataset.  * = best")
    path = append_results(ctx, csv_rows)
    print(f"results appended to {path} (and results.md)")
    if any(math.isnan(r.get("rmse", 0.0)) for r in table):
        log.warning("some metrics are NaN")
    return table
