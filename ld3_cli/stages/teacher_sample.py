"""``ld3 teacher-sample``: the training pairs (noise, teacher output) every schedule learns from.

Sample i uses seed ``seed_start + i`` (``seed`` for training pairs; ``sample.seed_offset`` for the
held-out pairs of ``ld3 eval``), so any subset can be regenerated.  The teacher is a many-step
solve (config group ``teacher``: solver, NFE, discretization).  Work is saved per batch, so an
interrupted run resumes; the finished artifact holds

    tensors: noises [n,C,H,W] (unit variance; the solve starts at sigma_max * noise),
             outputs [n,C,H,W] (teacher final states), images [n,C',H',W'] (decoded, [-1, 1]),
             cond [n,...] (when the model is conditional)
    info:    the teacher's own accuracy (RMSE to a teacher with twice the NFE on a few samples).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from ..errors import MissingArtifactError, NumericalError
from ..schedules import discretize
from ..solvers import solve
from ..store import Artifact, load_tensors, make_key, save_tensors
from .checks import solver_options, steps_for
from .context import StageContext
from .keys import teacher_fields

log = logging.getLogger("ld3")
KIND = "teacher"


def teacher_sigmas(ctx: StageContext, nfe: Optional[int] = None) -> torch.Tensor:
    t = ctx.cfg.teacher
    steps = steps_for(t.solver, int(nfe or t.nfe))
    return discretize(str(t.discretization), steps, ctx.model.schedule)


def run_teacher(ctx: StageContext, noises: torch.Tensor, cond, nfe: Optional[int] = None) -> torch.Tensor:
    """Teacher final states for unit ``noises`` (no grad)."""
    t = ctx.cfg.teacher
    sig = teacher_sigmas(ctx, nfe)
    with torch.no_grad():
        return solve(str(t.solver.name), ctx.model, noises * float(sig[0]), sig, cond=cond, **solver_options(t.solver))


def teacher_key(ctx: StageContext, seed_start: int, n: int) -> str:
    return make_key(teacher_fields(ctx.cfg, seed_start, n))


def teacher_artifact(ctx: StageContext, seed_start: Optional[int] = None, n: Optional[int] = None,
                     produce: bool = True) -> Artifact:
    """Return the teacher artifact for these seeds, producing it when allowed and missing."""
    seed_start = int(ctx.cfg.seed if seed_start is None else seed_start)
    n = int(ctx.cfg.teacher.n if n is None else n)
    fields = teacher_fields(ctx.cfg, seed_start, n)
    key = make_key(fields)
    store = ctx.store
    # `ld3 teacher-sample` makes the training pairs; other seeds (eval's held-out pairs) are made by the stage itself
    training = (seed_start, n) == (int(ctx.cfg.seed), int(ctx.cfg.teacher.n))
    producer = ctx.command("teacher-sample") if training else ctx.command()
    if store.exists(ctx.model_key, KIND, key):
        return store.open(ctx.model_key, KIND, key, producer=producer)
    if not produce:
        raise MissingArtifactError(f"no teacher samples for this model/teacher config ({ctx.model_key}/{KIND}/{key}); "
                                   f"produce them with `{producer}`")
    _ = ctx.model  # a model that cannot be loaded fails here, before anything is written
    with store.lock(ctx.model_key, KIND, key):
        if store.exists(ctx.model_key, KIND, key):
            return store.open(ctx.model_key, KIND, key, producer=producer)
        return _produce(ctx, fields, key, seed_start, n, producer)


def _produce(ctx: StageContext, fields: dict, key: str, seed_start: int, n: int, command: str) -> Artifact:
    model = ctx.model
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
            if s in done:
                continue
            seeds = list(range(seed_start + s, seed_start + min(s + bs, n)))
            noises = ctx.noises(seeds)
            cond = model.draw_conditions(torch.tensor(seeds))
            if isinstance(cond, torch.Tensor):
                cond = cond.to(ctx.device)
            out = run_teacher(ctx, noises, cond)
            images = model.decode(out)
            if not (bool(torch.isfinite(out).all()) and bool(torch.isfinite(images).all())):
                raise NumericalError(f"the teacher produced NaN/Inf for seeds {seeds[0]}..{seeds[-1]} "
                                     f"({t.solver.name}, NFE {t.nfe}); check the model's outputs, or change "
                                     "teacher.solver / teacher.nfe / teacher.discretization")
            batch = {"noises": noises, "outputs": out, "images": images}
            if isinstance(cond, torch.Tensor):
                batch["cond"] = cond
            save_tensors(part / f"batch_{s:08d}.safetensors", batch)
            bar.update(len(seeds))
    finally:
        bar.close()
    parts = [load_tensors(part / f"batch_{s:08d}.safetensors") for s in starts]
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    check = _accuracy_check(ctx, tensors)
    info = {"seconds": time.perf_counter() - t0, "teacher_check": check, "model": model.describe(),
            "sigmas": teacher_sigmas(ctx).tolist()}
    art = ctx.store.write(ctx.model_key, KIND, fields, tensors=tensors, info=info,
                          command=command)
    import shutil

    shutil.rmtree(part, ignore_errors=True)
    log.info("teacher samples (%d) written to %s", n, art.path)
    return art


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


def run(ctx: StageContext) -> Artifact:
    """Stage entry point: the training teacher pairs for the current config."""
    art = teacher_artifact(ctx)
    print(f"teacher samples: {art.path}")
    return art
