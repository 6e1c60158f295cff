"""``ld3 export``: write a learned (or baseline) schedule for other samplers.

The schedule is ``schedule`` (``ld3`` = the learned one for the current model, solver and
NFE, else a baseline name) and the formats ``export.format`` (``all`` or any of json,
diffusers, kdiffusion, comfyui).  Files, in ``export.out`` (default
``<cache>/exports/<model key>/<schedule>-<solver>-nfe<N>[-<key>]/``):

    schedule.json          the whole sampler (grid, decoupled evaluation, coefficients, network convention)
    ld3_sampler.py         runs schedule.json exactly (torch only); the runners below adapt it
    ld3_kdiffusion.py      sample_ld3: k-diffusion's sampler signature     kdiffusion_sigmas.py  stock lists
    ld3_diffusers.py       LD3Scheduler for stock diffusers pipelines      diffusers_snippet.py  stock schedulers
    comfyui_ld3/           a ComfyUI node pack (SAMPLER + SIGMAS)          comfyui_sigmas*.txt   ManualSigmas lines

Every file is written atomically; see docs/export.md and :mod:`ld3_cli.export`.
"""
from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..export import ExportSchedule, integer_timesteps, parse_formats, write_export
from ..models.conventions import network_convention
from .artifacts import baseline_options, learned_schedule, load_sampler, schedule_for
from .context import StageContext


def default_out(ctx: StageContext, name: str, key: str | None) -> Path:
    leaf = f"{name}-{ctx.solver_tag}-nfe{ctx.nfe}" + (f"-{key}" if key else "")
    return ctx.store.root / "exports" / ctx.model_key / leaf


def export_schedule(ctx: StageContext, name: str) -> ExportSchedule:
    """The schedule ``name`` for the current model / solver / NFE, with its provenance."""
    art = None
    if name == "ld3":
        art = learned_schedule(ctx)  # fails fast, before the model is built, when there is none
        sampler = load_sampler(art, ctx.model.schedule)
    else:
        sampler, _ = schedule_for(ctx, name)
    sched = ctx.model.schedule
    prov: dict = {"schedule": name, "noise_schedule": sched.to_dict(), "ld3_version": __version__,
                  "command": ctx.command()}
    if art is not None:
        m = art.manifest
        info = m.get("info", {})
        prov.update({"artifact_key": art.key, "artifact_path": str(art.path), "produced_by": m.get("command"),
                     "created": m.get("created"), "teacher": m.get("inputs", {}).get("teacher"),
                     "train": {k: info.get(k) for k in ("loss", "best_val", "init", "init_val", "iterations")}})
    else:
        prov.update({"baseline": name, "options": baseline_options(ctx, name)})
    return ExportSchedule(name=name, sigmas=sampler.sigmas, sigmas_eval=sampler.evaluation_sigmas,
                          noise_schedule=sched, solver=ctx.solver_name, solver_options=dict(ctx.solver_options),
                          nfe=ctx.nfe, model=str(ctx.model_cfg.get("name", ctx.model_key)), model_key=ctx.model_key,
                          provenance=prov, eval_scales=sampler.eval_scales, noise_estimate=sampler.noise_estimate,
                          coefficients=sampler.table(), learned_coefficients=sampler.coefficients is not None,
                          network=network_convention(ctx.model, sampler.evaluation_sigmas), residual=sampler.residual)


def run(ctx: StageContext) -> dict:
    """Stage entry point: returns ``{"out": dir, "files": [paths], "schedule": ExportSchedule}``."""
    cfg = ctx.cfg.get("export", {}) or {}
    formats = parse_formats(cfg.get("format", "all"))  # bad formats fail before any work
    name = str(ctx.cfg.schedule)
    es = export_schedule(ctx, name)
    out = cfg.get("out")
    out_dir = Path(str(out)).expanduser() if out else default_out(ctx, name, es.provenance.get("artifact_key"))
    model_path = ctx.model_cfg.get("path") if ctx.model_cfg.get("kind") == "diffusers" else None
    paths = write_export(es, out_dir, formats, model_path)
    _report(es, [p.relative_to(out_dir).as_posix() for p in paths], formats)
    print(f"export: {out_dir}")
    return {"out": out_dir, "files": paths, "schedule": es}


def _report(es: ExportSchedule, paths, formats) -> None:
    print(f"schedule {es.name!r} of {es.model} for {es.solver_label()}, NFE {es.nfe} ({es.steps} steps):")
    print("  sigma      " + " ".join(f"{v:.5g}" for v in es.sigmas.tolist()))
    gap = es.decoupled_gap()
    if gap > 0:
        print("  sigma_eval " + " ".join(f"{v:.5g}" for v in es.sigmas_eval.tolist()))
    if es.to_zero:
        stock = ", ".join(f"{lib} {name.split('(')[0].strip()}" for lib, name in es.trained_for()["stock"].items())
        print(f"  trained for the stock sampler: {stock}, on the list " + " ".join(
            f"{v:.5g}" for v in es.stock_sigmas) + " -- it runs there as ld3 validated it")
    else:
        lost = es.time_steps_only()
        print("  exact runners (the whole sampler" + (": " + "; ".join(lost) if lost else "") + "): "
              "ld3_kdiffusion.sample_ld3, ld3_diffusers.LD3Scheduler, the comfyui_ld3 node pack, ld3_sampler.py")
        if any(f in formats for f in ("diffusers", "kdiffusion", "comfyui")):
            print(f"  WARNING: the stock-sampler sigma lists drop all of that: {es.stock_warning()}")
    if "comfyui" in formats and es.comfyui_rounds_time():
        print("  note: ComfyUI rounds this model's network time to the nearest training step; ld3 trained on the exact "
              "step (train with model.time_rounding=nearest to match ComfyUI exactly)")
    if "diffusers" in formats:
        rep = integer_timesteps(es)
        if rep is not None:
            merged = f"; rounding merges steps {rep['merged']}" if rep["merged"] else ""
            print(f"  note: integer timesteps (DPMSolverMultistep) move sigma by up to {rep['max_rel_change']:.2%}"
                  f"{merged} -- the table is in diffusers_snippet.py")
    print("  files: " + ", ".join(paths))
