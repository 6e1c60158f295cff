"""``ld3 export``: write a learned (or baseline) schedule for other samplers.

The schedule is ``schedule`` (``ld3`` = the learned one for the current model, solver and
NFE, else a baseline name) and the formats ``export.format`` (``all`` or any of json,
diffusers, kdiffusion, comfyui).  Files, in ``export.out`` (default
``<cache>/exports/<model key>/<schedule>-<solver>-nfe<N>[-<key>]/``):

    schedule.json          sigmas, sigmas_eval, native t, t_eval, lambdas, solver, NFE, model, provenance
    diffusers_snippet.py   builds diffusers schedulers on the schedule (and says what diffusers loses)
    kdiffusion_sigmas.py   a torch tensor for k_diffusion.sampling.sample_*
    comfyui_sigmas.txt     one line for ComfyUI's ManualSigmas node (SIGMAS); comfyui_sigmas.json

Every file is written atomically; see docs/export.md and :mod:`ld3_cli.export`.
"""
from __future__ import annotations

from pathlib import Path

from .. import __version__
from ..export import ExportSchedule, integer_timesteps, parse_formats, write_export
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
                          coefficients=sampler.table(), learned_coefficients=sampler.coefficients is not None)


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
    _report(es, paths, formats)
    print(f"export: {out_dir}")
    return {"out": out_dir, "files": paths, "schedule": es}


def _report(es: ExportSchedule, paths, formats) -> None:
    print(f"schedule {es.name!r} of {es.model} for {es.solver_label()}, NFE {es.nfe} ({es.steps} steps):")
    print("  sigma      " + " ".join(f"{v:.5g}" for v in es.sigmas.tolist()))
    gap = es.decoupled_gap()
    if gap > 0:
        print("  sigma_eval " + " ".join(f"{v:.5g}" for v in es.sigmas_eval.tolist()))
        print(f"  note: the decoupled evaluation times differ from the grid by up to {gap:.2%}; only schedule.json "
              "keeps them (diffusers, k-diffusion and ComfyUI evaluate on the grid)")
    if es.learned_coefficients:
        print("  note: the solver's coefficients were learned too; only schedule.json (run by ld3_sampler.py) "
              "carries them -- the diffusers, k-diffusion and ComfyUI files carry the time steps only")
    if "diffusers" in formats:
        rep = integer_timesteps(es)
        if rep is not None:
            merged = f"; rounding merges steps {rep['merged']}" if rep["merged"] else ""
            print(f"  note: integer timesteps (DPMSolverMultistep) move sigma by up to {rep['max_rel_change']:.2%}"
                  f"{merged} -- the table is in diffusers_snippet.py")
    print("  files: " + ", ".join(p.name for p in paths))
