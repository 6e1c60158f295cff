"""Cheap semantic checks of a composed config (no model loading, nothing written).

Run by the CLI before Hydra starts (for every job of a sweep) and again by each stage, so an
impossible setting is one line and exit status 2 before any work is done.
"""
from __future__ import annotations

from typing import Optional

from ..errors import ConfigError

SOLVER_KEYS = ("name",)


def solver_options(solver_cfg) -> dict:
    """The solver config minus its name: the options passed to ``solve``.

    Keys that are another solver's options are dropped (an experiment config sets, e.g., UniPC's
    ``variant`` for every solver of a sweep); a key that no solver takes is a ConfigError.
    """
    from ..solvers import SOLVERS, get_solver

    d = {k: v for k, v in dict(solver_cfg).items() if k != "name"}
    own = get_solver(str(solver_cfg.get("name"))).option_names()
    known = frozenset().union(*(s.option_names() for s in SOLVERS.values()))
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"solver.{unknown[0]} is not an option of any solver; solver "
                          f"'{solver_cfg.get('name')}' takes {sorted(own)}")
    return {k: v for k, v in d.items() if k in own}


def solver_fields(solver_cfg) -> dict:
    """What a solver config contributes to store keys: its name and the options it takes."""
    return {"name": str(solver_cfg.get("name")), **solver_options(solver_cfg)}


def steps_for(solver_cfg, nfe) -> int:
    """Steps for ``nfe`` evaluations of this solver, validated (raises ConfigError)."""
    from ..solvers import get_solver

    if isinstance(nfe, bool) or not isinstance(nfe, int):
        try:
            nfe = int(nfe)
        except (TypeError, ValueError):
            raise ConfigError(f"nfe must be a whole number >= 1, got {nfe!r}") from None
    if nfe < 1:
        raise ConfigError(f"nfe must be at least 1, got {nfe}")
    spec = get_solver(str(solver_cfg.get("name")))
    steps = spec.steps_for_nfe(nfe)
    spec.validate(steps, solver_cfg.get("order"))
    return steps


def check_config(cfg) -> Optional[str]:
    """Return a one-line problem description, or None."""
    try:
        _check(cfg)
    except ConfigError as e:
        return str(e)
    return None


def _check(cfg) -> None:
    from ..schedules.discretize import available

    steps_for(cfg.solver, cfg.nfe)
    t = cfg.teacher
    steps_for(t.solver, t.nfe)
    if int(t.n) < 2:
        raise ConfigError(f"teacher.n must be at least 2 (a training and a validation sample), got {t.n}")
    kinds = available()
    if cfg.schedule != "ld3" and cfg.schedule not in kinds:
        raise ConfigError(f"schedule '{cfg.schedule}' is unknown; use ld3 or one of {kinds}")
    if t.discretization not in kinds:
        raise ConfigError(f"teacher.discretization '{t.discretization}' is unknown; choose one of {kinds}")
    if str(cfg.eval.metrics) not in ("auto", "fid", "fd_pixels"):
        raise ConfigError(f"eval.metrics must be auto, fid or fd_pixels; got '{cfg.eval.metrics}'")
    for name in cfg.eval.compare:
        if name != "ld3" and name not in kinds:
            raise ConfigError(f"eval.compare has unknown schedule '{name}'; use ld3 or one of {kinds}")
    tr = cfg.train
    if tr.param not in ("lambda", "time"):
        raise ConfigError(f"train.param must be lambda or time, got '{tr.param}'")
    if tr.loss not in ("auto", "l2", "l1", "pseudo_huber", "lpips"):
        raise ConfigError(f"train.loss must be auto, lpips, l2, l1 or pseudo_huber, got '{tr.loss}'")
    if not 0 < float(tr.val_fraction) < 1:
        raise ConfigError(f"train.val_fraction must be in (0, 1), got {tr.val_fraction}")
    if tr.init != "auto" and tr.init not in kinds:
        raise ConfigError(f"train.init '{tr.init}' is unknown; use auto or one of {kinds}")
    if int(tr.batch_size) < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {tr.batch_size}")
    if tr.r is not None and float(tr.r) < 0:
        raise ConfigError(f"train.r must be >= 0 (0 = hard loss), got {tr.r}")
    if int(cfg.sample.n) < 1:
        raise ConfigError(f"sample.n must be >= 1, got {cfg.sample.n}")
    if int(cfg.sample.batch_size) < 1 or int(cfg.sample.shard_size) < 1:
        raise ConfigError("sample.batch_size and sample.shard_size must be >= 1")
    m = cfg.model
    if "_target_" not in m:
        from ..models.registry import BUILDERS

        if m.get("kind") not in BUILDERS:
            raise ConfigError(f"model.kind '{m.get('kind')}' is unknown; choose one of {sorted(BUILDERS)} "
                              "or set model._target_=your_pkg.YourDenoiser")
    autocast = (cfg.get("speed") or {}).get("autocast")
    if autocast not in (None, "bf16", "fp16"):
        raise ConfigError(f"speed.autocast must be null, bf16 or fp16; got '{autocast}'")
    dev = str(cfg.device)
    if dev != "auto" and dev.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; got '{dev}'")
