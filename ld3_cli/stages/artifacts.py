"""The artifacts several stages read, found in the store or made there: the shared look-ups.

* :func:`teacher_artifact`: teacher pairs for a range of seeds (``ld3 teacher-sample`` makes the
  training pairs; other seeds -- eval's held-out pairs, :func:`heldout_teacher_artifact` -- are made on
  demand); :func:`stored_teacher_images` reads the held-out images back for the sample grids;
* :func:`learned_schedule` / :func:`load_sampler`: the LD3 schedule ``ld3 train`` made, as the
  :class:`~ld3_cli.solvers.sampler.Sampler` that runs exactly what was learned;
* :func:`schedule_for`: any schedule by name, learned or baseline (searched baselines cached);
* :func:`samples_artifact`: the sample shards of a schedule, made when missing.

Stage modules import these instead of each other.  Every "make it if missing" goes through
:meth:`~ld3_cli.store.Store.get_or_make`; the makers are :mod:`.teacher_pairs` and :mod:`.sample_shards`.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Optional

import torch

from ..errors import ConfigError, CorruptArtifactError, MissingArtifactError
from ..schedules import check_sigmas, discretize
from ..search import NEEDS_MODEL, SEARCHED
from ..solvers import get_solver
from ..solvers.sampler import Sampler
from ..store import Artifact, make_key, to_plain
from ..utils.distributed import rank_and_world
from .context import StageContext
from .keys import samples_fields, schedule_fields, teacher_fields
from .sample_shards import make_samples, make_samples_distributed
from .teacher_pairs import make_teacher_pairs

log = logging.getLogger("ld3")
SEARCHED_VERSION = 1


# -- teacher pairs -------------------------------------------------------------------------------
def teacher_artifact(ctx: StageContext, seed_start: Optional[int] = None, n: Optional[int] = None,
                     produce: bool = True) -> Artifact:
    """Teacher pairs for seeds ``seed_start .. seed_start + n - 1`` (default: the training pairs, ``seed`` and
    ``teacher.n``), made when allowed and missing; else MissingArtifactError naming the command."""
    seed_start = int(ctx.cfg.seed if seed_start is None else seed_start)
    n = int(ctx.cfg.teacher.n if n is None else n)
    fields = teacher_fields(ctx.cfg, ctx.settings.teacher_solver, seed_start, n)
    key = make_key(fields)
    # `ld3 teacher-sample` makes the training pairs; other seeds (eval's held-out pairs) are made by the stage itself
    training = (seed_start, n) == (int(ctx.cfg.seed), int(ctx.cfg.teacher.n))
    producer = ctx.command("teacher-sample") if training else ctx.command()
    if not produce and not ctx.store.exists(ctx.model_key, "teacher", key):
        raise MissingArtifactError(f"no teacher samples for this model/teacher config ({ctx.model_key}/teacher/{key}); "
                                   f"produce them with `{producer}`")
    # a model that cannot be loaded fails in `prepare`, before anything is written
    art = ctx.store.get_or_make(ctx.model_key, "teacher", fields, lambda: make_teacher_pairs(ctx, key, seed_start, n),
                                producer=producer, prepare=lambda: ctx.model)
    if art.made:
        log.info("teacher samples (%d) written to %s", n, art.path)
    return art


def heldout_teacher_artifact(ctx: StageContext) -> Artifact:
    """Eval's held-out teacher pairs (seeds ``sample.seed_offset + i``, ``i < eval.heldout_n``), made when missing."""
    return teacher_artifact(ctx, seed_start=int(ctx.cfg.sample.seed_offset), n=int(ctx.cfg.eval.heldout_n))


def stored_teacher_images(ctx: StageContext, seeds: list) -> Optional[torch.Tensor]:
    """Teacher images ``[k, C, H, W]`` of these seeds from the held-out pairs, when the store holds them and they
    cover the seeds (``ld3 eval`` makes them after sampling its first schedule); else None."""
    off, n = int(ctx.cfg.sample.seed_offset), int(ctx.cfg.eval.heldout_n)
    if not seeds or min(seeds) < off or max(seeds) >= off + n:
        return None
    fields = teacher_fields(ctx.cfg, ctx.settings.teacher_solver, off, n)
    if not ctx.store.exists(ctx.model_key, "teacher", make_key(fields)):
        return None
    images = heldout_teacher_artifact(ctx).tensors({"images": (n, None, None, None)})["images"]
    return images[[s - off for s in seeds]]


# -- the learned schedule ------------------------------------------------------------------------
def schedule_fields_for(ctx: StageContext) -> dict:
    """The key fields of the learned schedule for this config (MissingArtifactError without teacher pairs)."""
    return schedule_fields(ctx.cfg, ctx.settings.solver, teacher_artifact(ctx, produce=False).key)


def learned_schedule(ctx: StageContext) -> Artifact:
    """The learned schedule for the current config (MissingArtifactError names the train command)."""
    try:
        key = make_key(schedule_fields_for(ctx))
    except MissingArtifactError:
        raise MissingArtifactError(f"no learned schedule for solver={ctx.solver_name} nfe={ctx.nfe} (and no teacher "
                                   f"samples yet); produce it with `{ctx.command('teacher-sample')}` then "
                                   f"`{ctx.command('train')}`, or `{ctx.command('run')}`") from None
    if not ctx.store.exists(ctx.model_key, "schedules", key):
        raise MissingArtifactError(f"no learned schedule for solver={ctx.solver_name} nfe={ctx.nfe} in "
                                   f"{ctx.store.root}; produce it with `{ctx.command('train')}`")
    return ctx.store.open(ctx.model_key, "schedules", key, producer=ctx.command("train"))


def load_sampler(art: Artifact, schedule) -> Sampler:
    """What a learned-schedule artifact runs: its grid, decoupled evaluation and coefficients, validated
    against the model's range (CorruptArtifactError names the path and the rebuild command)."""
    solver = str(art.config["solver"]["name"])
    n = get_solver(solver).steps_for(int(art.config["nfe"]), art.config["solver"])
    t = art.tensors({"sigmas": (n + 1,), "sigmas_eval": (n + 1,)})
    rebuild = f"; delete {art.path} and rerun `{art.rebuild}`"
    try:
        sig = check_sigmas(t["sigmas"], n, "learned schedule")
    except Exception as e:  # noqa: BLE001 - any validation failure means a corrupt entry
        raise CorruptArtifactError(f"{art.path}: {e}{rebuild}") from None
    lo, hi = schedule.sigma_min, schedule.sigma_max
    tol = 1e-6 * hi
    if float(sig[0]) > hi + tol or float(sig[-1]) < lo - 1e-6 * lo:
        raise CorruptArtifactError(f"{art.path}: learned schedule leaves the model's range [{lo:.6g}, {hi:.6g}] "
                                   f"({float(sig[-1]):.6g}..{float(sig[0]):.6g}){rebuild}")
    ev = t["sigmas_eval"]
    if ev.shape != sig.shape or not bool(torch.all(ev > 0)):
        raise CorruptArtifactError(f"{art.path}: sigmas_eval is invalid{rebuild}")
    scales = t.get("eval_scales")
    if scales is not None and (scales.shape != sig.shape or not bool(torch.all(scales > 0))):
        raise CorruptArtifactError(f"{art.path}: eval_scales is invalid{rebuild}")
    plain = art.json("schedule.json").get("sampler", {"solver": solver, "options": art.config["solver"]})
    try:
        sampler = Sampler.from_tensors({**t, "sigmas": sig}, plain)
    except (ConfigError, KeyError) as e:
        raise CorruptArtifactError(f"{art.path}: its learned coefficients are inconsistent ({e}){rebuild}") from None
    if sampler.coefficients is not None and sampler.coefficients.grid_steps != n:
        raise CorruptArtifactError(f"{art.path}: its coefficient table runs {sampler.coefficients.grid_steps} grid "
                                   f"steps, not {n}{rebuild}")
    return sampler


# -- any schedule by name ------------------------------------------------------------------------
def baseline_options(ctx: StageContext, name: str) -> dict:
    """The discretization options a baseline takes from the model config (AYS: ``model.ays_family``)."""
    opts: dict = {}
    if name == "ays":
        fam = ctx.model_cfg.get("ays_family")
        if fam:
            opts["model_family"] = fam
    return opts


def schedule_for(ctx: StageContext, name: str) -> tuple[Sampler, dict]:
    """``(sampler, description)`` for ``ld3`` or a baseline; the description enters sample keys."""
    if name == "ld3":
        art = learned_schedule(ctx)  # a missing schedule fails before the model is built
        return load_sampler(art, ctx.model.schedule), {"kind": "ld3", "key": art.key}
    opts = baseline_options(ctx, name)
    if name in SEARCHED:
        sig = _searched_baseline(ctx, name, opts)
    else:
        sig = discretize(name, ctx.n_steps, ctx.model.schedule, **opts)
    desc = {"kind": name, "sigmas": [float(f"{v:.12g}") for v in sig.tolist()]}
    return Sampler(ctx.solver_name, sig, dict(ctx.solver_options)), desc


def _searched_baseline(ctx: StageContext, name: str, opts: dict) -> torch.Tensor:
    """A searched baseline (GITS, DMN), searched once and kept in the store under ``baselines``."""
    fields = {"kind": name, "steps": ctx.n_steps, "options": to_plain(opts), "version": SEARCHED_VERSION}
    if name in NEEDS_MODEL:  # the search runs the model on noises drawn from the seed
        fields["seed"] = int(ctx.cfg.seed)

    def search() -> dict:
        t0 = time.perf_counter()
        log.info("computing the %s baseline for %d steps (cached afterwards)", name, ctx.n_steps)
        extra = {"denoiser": ctx.model, "seed": int(ctx.cfg.seed)} if name in NEEDS_MODEL else {}
        sig = discretize(name, ctx.n_steps, ctx.model.schedule, **opts, **extra)
        return {"tensors": {"sigmas": sig}, "info": {"seconds": time.perf_counter() - t0}}

    art = ctx.store.get_or_make(ctx.model_key, "baselines", fields, search,
                                producer=ctx.command("sample", [f"schedule={name}"]))
    return art.tensors({"sigmas": (ctx.n_steps + 1,)})["sigmas"].to(torch.float64)


# -- samples ---------------------------------------------------------------------------------------
def samples_artifact(ctx: StageContext, name: Optional[str] = None) -> Artifact:
    """The samples for schedule ``name`` (default ``cfg.schedule``), made when missing."""
    name = name or str(ctx.cfg.schedule)
    sampler, desc = schedule_for(ctx, name)
    fields = samples_fields(ctx.cfg, ctx.settings.solver, desc)
    key = make_key(fields)
    command = ctx.command("sample", [f"schedule={name}"])
    stored_teacher = functools.partial(stored_teacher_images, ctx)  # the grids' teacher images, when stored
    if rank_and_world()[1] > 1 and not ctx.store.exists(ctx.model_key, "samples", key):
        return make_samples_distributed(ctx, fields, key, sampler, name, command, stored_teacher)
    art = ctx.store.get_or_make(ctx.model_key, "samples", fields,
                                lambda: make_samples(ctx, key, sampler, name, command, stored_teacher),
                                producer=command)
    if art.made:
        log.info("samples (%d) written to %s", int(ctx.cfg.sample.n), art.path)
    return art
