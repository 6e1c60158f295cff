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
from ..errors import ConfigError, Ld3Error
from ..data.datasets import dataset_channels
from ..ld3.losses import check_loss
from ..ld3.options import check_train_options, effective_learn
from ..metrics.suite import check_suite
from ..models.registry import BUILDERS
from ..models.speed import AUTOCAST_CHOICES
from ..schedules import available
from ..solvers import get_solver, solve
from ..store import to_plain
from ..utils.devices import check_device


TRAINING_STAGES = ("train", "run")  # the stages whose loss must be available before anything runs


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


def check_config(cfg, files: bool = True) -> Optional[str]:
    """Return a one-line problem description, or None (``files``: also the files a run needs)."""
    try:
        _check(cfg, files)
    except Ld3Error as e:  # a bad value, or a file the run needs (the LPIPS weights)
        return str(e)
    return None


def _check(cfg, files: bool) -> None:
    check_solver(cfg.solver, cfg.nfe)
    t = cfg.teacher
    check_solver(t.solver, t.nfe, "teacher.solver")
    if int(t.n) < 2:
        raise ConfigError(f"teacher.n must be at least 2 (a training and a validation sample), got {t.n}")
    _check_schedule_names(cfg)
    check_suite(str(cfg.eval.metrics))
    train = check_train_options(to_plain(cfg.train))
    if str(cfg.get("stage")) in TRAINING_STAGES:  # a stock sampler learns no coefficients
        effective_learn(train.learn, get_solver(str(cfg.solver.name)))
    if files and str(cfg.get("stage")) in TRAINING_STAGES:  # LPIPS without its files stops here, before a model loads
        check_loss(train.loss, dataset_channels(to_plain(cfg.dataset)), train.lpips_weights)
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
