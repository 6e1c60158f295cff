"""Making teacher pairs: noises (seed ``seed_start + i``), teacher outputs and images, saved per batch.

Work is saved as ``batch_<start>.safetensors`` in the artifact's work-in-progress directory, so an
interrupted run resumes at the first missing batch.  The finished artifact holds

    tensors: noises [n,C,H,W] (unit variance; the solve starts at sigma_max * noise),
             outputs [n,C,H,W] (teacher final states), images [n,C',H',W'] (decoded, [-1, 1]),
             cond [n,...] (when the model is conditional)
    info:    the teacher's own accuracy (RMSE to a teacher with twice the NFE on a few samples).
"""
from __future__ import annotations

import logging
import time

import torch

from ..data.seeds import seed_inputs
from ..errors import NumericalError
from ..store import load_tensors, save_tensors
from .context import StageContext
from .inference import run_teacher, teacher_sigmas

log = logging.getLogger("ld3")
KIND = "teacher"


def make_teacher_pairs(ctx: StageContext, key: str, seed_start: int, n: int) -> dict:
    """Teacher pairs for seeds ``seed_start .. seed_start + n - 1``, as :meth:`Store.write` arguments."""
    t = ctx.cfg.teacher
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    part.mkdir(parents=True, exist_ok=True)
    bs = max(1, int(t.batch_size))
    starts = list(range(0, n, bs))
    done = {s for s in starts if (part / f"batch_{s:08d}.safetensors").is_file()}
    t0 = time.perf_counter()
    bar = ctx.progress(n, f"teacher {t.solver.name} NFE {t.nfe}", "img", initial=sum(min(bs, n - s) for s in done))
    try:
        for s in starts:
            if s not in done:
                seeds = list(range(seed_start + s, seed_start + min(s + bs, n)))
                save_tensors(part / f"batch_{s:08d}.safetensors", _teacher_batch(ctx, seeds))
                bar.update(len(seeds))
    finally:
        bar.close()
    parts = [load_tensors(part / f"batch_{s:08d}.safetensors") for s in starts]
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    check = _accuracy_check(ctx, tensors)
    info = {"seconds": time.perf_counter() - t0, "teacher_check": check, "model": ctx.model.describe(),
            "sigmas": teacher_sigmas(ctx).tolist()}
    return {"tensors": tensors, "info": info}


def _teacher_batch(ctx: StageContext, seeds: list[int]) -> dict:
    """``{noises, outputs, images[, cond]}`` of these seeds; NumericalError on NaN/Inf."""
    t = ctx.cfg.teacher
    noises, cond = seed_inputs(ctx.model, seeds, ctx.device)
    out = run_teacher(ctx, noises, cond)
    images = ctx.model.decode(out)
    if not (bool(torch.isfinite(out).all()) and bool(torch.isfinite(images).all())):
        raise NumericalError(f"the teacher produced NaN/Inf for seeds {seeds[0]}..{seeds[-1]} "
                             f"({t.solver.name}, NFE {t.nfe}); check the model's outputs, or change "
                             "teacher.solver / teacher.nfe / teacher.discretization")
    batch = {"noises": noises, "outputs": out, "images": images}
    if isinstance(cond, torch.Tensor):
        batch["cond"] = cond
    return batch


def _accuracy_check(ctx: StageContext, tensors: dict) -> dict:
    """RMSE between the teacher and a teacher with twice the NFE on the first ``check_n`` samples."""
    t = ctx.cfg.teacher
    k = min(int(t.check_n), tensors["noises"].shape[0])
    if k <= 0:
        return {}
    cond = tensors.get("cond")
    cond = cond[:k].to(ctx.device) if cond is not None else None
    fine = ctx.model.decode(run_teacher(ctx, tensors["noises"][:k].to(ctx.device), cond, nfe=2 * int(t.nfe)))
    rmse = float(((fine.float() - tensors["images"][:k].to(ctx.device).float()) ** 2).mean().sqrt())
    res = {"n": k, "nfe": int(t.nfe), "nfe_check": 2 * int(t.nfe), "rmse": rmse}
    if rmse > float(t.warn_rmse):
        log.warning("the teacher has not converged: RMSE %.4f to a teacher with twice the NFE (> teacher.warn_rmse "
                    "%.4f); every learned schedule inherits this error. Raise teacher.nfe.", rmse, float(t.warn_rmse))
    else:
        log.info("teacher accuracy: RMSE %.2e to a %d-NFE teacher on %d samples", rmse, 2 * int(t.nfe), k)
    return res
