"""``ld3 schedules``: every baseline schedule for the current model, solver and NFE, side by side.

Prints three compact tables (rows = schedules, columns = step index ``i = 0..N``): the EDM
sigma, the model's native time ``t`` and the log-SNR ``lambda = -log(sigma)``; and writes one
PNG of log-SNR against step index for all of them (``schedules.out``, default
``<cache>/plots/<model key>/schedules-<solver><order>-nfe<N>.png``).

``schedules.include``: ``all`` = every registered discretization that applies to the model
(``ays`` only for models with an AYS family, never ``custom``, which needs explicit values;
``gits`` and ``dmn`` are computed once and cached in the store, as ``ld3 sample`` does) plus
``ld3`` when a learned schedule exists; or a list of names, each of which must then be
available.  The learned schedule's decoupled evaluation times get their own row
(``ld3 (eval)``) when they differ from its grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import ConfigError, MissingArtifactError
from ..schedules import available
from ..store import atomic_write_bytes
from .artifacts import learned_schedule, schedule_for
from .context import StageContext

PREFERRED_ORDER = ["ld3", "time_uniform", "time_quadratic", "logsnr", "edm", "time_edm", "ays", "dmn", "gits"]
NEEDS_VALUES = {"custom"}


def valid_names() -> list[str]:
    kinds = available()
    return [n for n in PREFERRED_ORDER if n == "ld3" or n in kinds] + [k for k in kinds if k not in PREFERRED_ORDER]


def requested(spec) -> tuple[list[str], bool]:
    """``(names in display order, explicit)`` for ``schedules.include`` (``all``, a list or a comma string)."""
    names = valid_names()
    if spec is None or (isinstance(spec, str) and spec.strip() == "all"):
        return names, False
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if "all" in items:
        return names, False
    bad = [s for s in items if s not in names]
    if bad or not items:
        raise ConfigError(f"schedules.include has unknown schedule(s) {bad or items}; use all or a list of "
                          f"{', '.join(names)} (e.g. schedules.include=[ld3,edm,logsnr])")
    return [n for n in names if n in items], True


def skip_reason(ctx: StageContext, name: str) -> Optional[str]:
    """Why ``name`` does not apply to this model (None when it does); used for ``include=all`` only."""
    if name in NEEDS_VALUES:
        return "needs explicit values"
    if name == "ays" and not ctx.model_cfg.get("ays_family"):
        return "no AYS list for this model: model.ays_family is unset"
    if name == "time_edm" and ctx.model.schedule.kind == "edm":
        return "the same as edm for an EDM model (native time is sigma)"
    if name == "ld3":
        try:
            learned_schedule(ctx)
        except MissingArtifactError:
            return f"no learned schedule yet (`{ctx.command('train')}`)"
    return None


def collect(ctx: StageContext, names: list[str], explicit: bool) -> tuple[dict, dict]:
    """``({name: (sigmas, sigmas_eval)}, {name: reason skipped})``; explicit requests fail loudly."""
    if explicit and "ld3" in names:
        learned_schedule(ctx)  # a clear MissingArtifactError before any model work
    out, skipped = {}, {}
    for name in names:
        if not explicit:
            reason = skip_reason(ctx, name)
            if reason:
                skipped[name] = reason
                continue
        try:
            sampler, _ = schedule_for(ctx, name)
            sig = sampler.sigmas
            ev = sig if sampler.sigmas_eval is None else sampler.sigmas_eval
        except ConfigError as e:
            if explicit:
                raise
            skipped[name] = str(e).split(";")[0]
            continue
        out[name] = (sig.to(torch.float64).cpu(), ev.to(torch.float64).cpu())
    return out, skipped


def rows(scheds: dict) -> list[tuple[str, torch.Tensor]]:
    """``(label, sigmas)`` rows: each schedule, plus ``ld3 (eval)`` when its evaluation times differ."""
    out = []
    for name, (sig, ev) in scheds.items():
        out.append((name, sig))
        if not torch.equal(sig, ev):
            out.append((f"{name} (eval)", ev))
    return out


def table(title: str, labeled: list[tuple[str, list[float]]]) -> str:
    width = max([len(lbl) for lbl, _ in labeled] + [8])
    n = max(len(v) for _, v in labeled)
    lines = [title, f"{'schedule':<{width}} " + " ".join(f"{i:>10d}" for i in range(n))]
    for lbl, vals in labeled:
        lines.append(f"{lbl:<{width}} " + " ".join(f"{v:>10.5g}" for v in vals))
    return "\n".join(lines)


def learned_tables(ctx: StageContext):
    """``(learned, base)`` multistep tables when the learned schedule carries learned coefficients, else None."""
    sampler, _ = schedule_for(ctx, "ld3")
    return None if sampler.coefficients is None else (sampler.coefficients, sampler.base_table())


def default_out(ctx: StageContext) -> Path:
    return ctx.store.root / "plots" / ctx.model_key / f"schedules-{ctx.solver_tag}-nfe{ctx.nfe}.png"


def run(ctx: StageContext) -> dict:
    """Stage entry point: returns ``{"schedules": {name: (sigmas, sigmas_eval)}, "skipped": {...}, "plot": path}``."""
    cfg = ctx.cfg.get("schedules", {}) or {}
    names, explicit = requested(cfg.get("include", "all"))
    out = cfg.get("out")
    png = Path(str(out)).expanduser() if out else default_out(ctx)
    if png.suffix.lower() != ".png":
        raise ConfigError(f"schedules.out={png} must be a .png path (e.g. schedules.out=schedules.png)")
    scheds, skipped = collect(ctx, names, explicit)
    if not scheds:
        raise ConfigError(f"no schedule could be made ({'; '.join(f'{k}: {v}' for k, v in skipped.items())}); "
                          "check schedules.include")
    noise = ctx.model.schedule
    labeled = rows(scheds)
    model = ctx.model_cfg.get("name", ctx.model_key)
    solver = ctx.solver_name + (f" order {ctx.solver_options['order']}" if "order" in ctx.solver_options else "")
    solver += ", analytic first step" if ctx.analytic_first else ""
    print(f"schedules for {model} ({ctx.model_key}): {solver}, NFE {ctx.nfe} = {ctx.n_steps} steps; "
          f"noise schedule {noise.kind}")
    print()
    print(table("sigma (EDM noise level, x = x0 + sigma * noise)", [(lbl, s.tolist()) for lbl, s in labeled]))
    print()
    print(table(f"native t ({noise.kind})", [(lbl, noise.t(s).tolist()) for lbl, s in labeled]))
    print()
    print(table("lambda = -log(sigma) (log-SNR)", [(lbl, (-torch.log(s)).tolist()) for lbl, s in labeled]))
    if skipped:
        print()
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    from ..utils.plots import schedules_plot

    data = schedules_plot({lbl: s.tolist() for lbl, s in labeled}, f"{model}: {solver}, NFE {ctx.nfe}",
                          learned_tables(ctx) if "ld3" in scheds else None)
    try:
        atomic_write_bytes(png, data)
    except OSError as e:
        raise ConfigError(f"cannot write {png} ({e}); choose another path with schedules.out=/some/file.png") from None
    print()
    print(f"plot: {png}")
    return {"schedules": scheds, "skipped": skipped, "plot": png}
