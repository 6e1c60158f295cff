"""Cheap semantic checks of a composed config (no model loading, nothing written).

Run by the CLI before Hydra starts (for every job of a sweep) and again by each stage, so an
impossible setting is one line and exit status 2 before any work is done.  Every ``train.*``
option is checked (:func:`ld3_cli.ld3.options.check_train_options`), and both solvers run once on
a trivial problem, so every option a solver reads is checked too.  The names each setting
accepts are imported from where they are defined.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import search  # noqa: F401 - registers the searched baselines (gits, dmn)
from ..errors import ConfigError
from ..ld3.options import check_train_options
from ..metrics.suite import check_suite
from ..models.registry import BUILDERS
from ..models.speed import AUTOCAST_CHOICES
from ..schedules import available
from ..solvers import get_solver, solve
from ..store import to_plain
from ..utils.devices import check_device


def solver_options(solver_cfg) -> dict:
    """The solver config minus its name: the options passed to ``solve``."""
    d = dict(solver_cfg)
    d.pop("name", None)
    return d


def steps_for(solver_cfg, nfe) -> int:
    """Steps for ``nfe`` evaluations of this solver, validated (raises ConfigError)."""
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


def check_solver(solver_cfg, nfe, what: str = "solver") -> int:
    """:func:`steps_for`, then one solve of a trivial problem with every option of ``solver_cfg``."""
    steps = steps_for(solver_cfg, nfe)
    sigmas = torch.logspace(1, -1, steps + 1, dtype=torch.float64)
    try:
        solve(str(solver_cfg.get("name")), _zero_denoiser, torch.zeros(1, 1, dtype=torch.float64), sigmas,
              **solver_options(solver_cfg))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a wrongly typed option fails inside the solver
        raise ConfigError(f"{what} options {to_plain(solver_options(solver_cfg))} are invalid "
                          f"({type(e).__name__}: {e})") from None
    return steps


def _zero_denoiser(x, sigma, cond=None):
    return torch.zeros_like(x)


def check_config(cfg) -> Optional[str]:
    """Return a one-line problem description, or None."""
    try:
        _check(cfg)
    except ConfigError as e:
        return str(e)
    return None


def _check(cfg) -> None:
    check_solver(cfg.solver, cfg.nfe)
    t = cfg.teacher
    check_solver(t.solver, t.nfe, "teacher.solver")
    if int(t.n) < 2:
        raise ConfigError(f"teacher.n must be at least 2 (a training and a validation sample), got {t.n}")
    _check_schedule_names(cfg)
    check_suite(str(cfg.eval.metrics))
    check_train_options(to_plain(cfg.train))
    if int(cfg.sample.n) < 1:
        raise ConfigError(f"sample.n must be >= 1, got {cfg.sample.n}")
    if int(cfg.sample.batch_size) < 1 or int(cfg.sample.shard_size) < 1:
        raise ConfigError("sample.batch_size and sample.shard_size must be >= 1")
    m = cfg.model
    if "_target_" not in m and m.get("kind") not in BUILDERS:
        raise ConfigError(f"model.kind '{m.get('kind')}' is unknown; choose one of {sorted(BUILDERS)} "
                          "or set model._target_=your_pkg.YourDenoiser")
    autocast = (cfg.get("speed") or {}).get("autocast")
    if autocast is not None and autocast not in AUTOCAST_CHOICES:
        raise ConfigError(f"speed.autocast must be null, {' or '.join(AUTOCAST_CHOICES)}; got '{autocast}'")
    check_device(cfg.device)


def _check_schedule_names(cfg) -> None:
    kinds = available()
    if cfg.schedule != "ld3" and cfg.schedule not in kinds:
        raise ConfigError(f"schedule '{cfg.schedule}' is unknown; use ld3 or one of {kinds}")
    if cfg.teacher.discretization not in kinds:
        raise ConfigError(f"teacher.discretization '{cfg.teacher.discretization}' is unknown; choose one of {kinds}")
    for name in cfg.eval.compare:
        if name != "ld3" and name not in kinds:
            raise ConfigError(f"eval.compare has unknown schedule '{name}'; use ld3 or one of {kinds}")
