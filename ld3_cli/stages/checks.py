"""The boundary check of a composed config: every option and every cross-option rule, once, nothing loaded.

Run by the CLI before Hydra starts (for every job of a sweep) and by the stage runner, so an impossible
setting is one line and exit status 2 before any model loads or any artifact is read.  :func:`run_settings`
resolves a config once (memoised on the resolved config, so the second look is free) into
:class:`RunSettings`: both solvers (:class:`~ld3_cli.solvers.config.SolverSetup`: options, NFE parity, order
against steps) and the :class:`~ld3_cli.ld3.options.TrainOptions`; then the rules between groups: what
``train.learn`` asks of the solver, the teacher pairs' train / validation split, the loss for the model's
images.  The names each setting accepts are imported from where they are defined.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .. import search  # noqa: F401 - registers the searched baselines (gits, dmn)
from ..data.datasets import dataset_channels
from ..errors import ConfigError, Ld3Error
from ..ld3.losses import check_loss
from ..ld3.options import TrainOptions, effective_learn
from ..ld3.start import split_sizes
from ..metrics.suite import check_suite
from ..models.registry import BUILDERS
from ..models.speed import AUTOCAST_CHOICES
from ..schedules import available
from ..solvers.config import SolverSetup
from ..store import canonical_json, to_plain
from ..utils.devices import check_device

TRAINING_STAGES = ("train", "run")  # the stages whose loss must be available before anything runs
_SETTINGS: dict[str, "RunSettings"] = {}  # resolved config (canonical JSON) -> its settings
_SETTINGS_KEPT = 64


@dataclass(frozen=True)
class RunSettings:
    """A config resolved and checked: the student ``solver``, the ``teacher_solver``, the ``train`` options and
    what is learned with this solver (``learn``: a stock sampler learns its time steps only)."""

    solver: SolverSetup
    teacher_solver: SolverSetup
    train: TrainOptions
    learn: tuple


def run_settings(cfg) -> RunSettings:
    """:class:`RunSettings` of ``cfg`` (ConfigError naming the first problem); computed once per resolved config."""
    plain = {k: to_plain(cfg[k]) for k in cfg if k != "hydra"}
    key = canonical_json(plain)
    if key not in _SETTINGS:
        if len(_SETTINGS) >= _SETTINGS_KEPT:
            _SETTINGS.clear()
        _SETTINGS[key] = _resolve(plain)
    return _SETTINGS[key]


def check_config(cfg, files: bool = True) -> Optional[str]:
    """Return a one-line problem description, or None (``files``: also the files a run needs)."""
    try:
        settings = run_settings(cfg)
        if files and str(cfg.get("stage")) in TRAINING_STAGES:  # LPIPS without its files stops here
            check_loss(settings.train.loss, dataset_channels(to_plain(cfg.dataset)), settings.train.lpips_weights)
    except Ld3Error as e:  # a bad value, or a file the run needs (the LPIPS weights)
        return str(e)
    return None


def _resolve(c: dict) -> RunSettings:
    solver = SolverSetup.from_config(c["solver"], c["nfe"])
    teacher = c["teacher"]
    teacher_solver = SolverSetup.from_config(teacher["solver"], teacher["nfe"], "teacher.solver")
    train = TrainOptions.from_dict(c["train"])
    learn = effective_learn(train.learn, solver.spec)
    training = str(c.get("stage")) in TRAINING_STAGES
    if training and "coefficients" in learn:
        solver.spec.check_learnable(solver.resolved)
    n_train, n_val = split_sizes(int(teacher["n"]), train.val_fraction)
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"teacher.n={teacher['n']} with train.val_fraction={train.val_fraction} leaves {n_train} "
                          f"training and {n_val} validation pairs; each needs at least 1 (raise teacher.n)")
    _check_schedule_names(c)
    check_suite(str(c["eval"]["metrics"]))
    _check_sample_and_model(c)
    return RunSettings(solver, teacher_solver, train, learn)


def _check_sample_and_model(c: dict) -> None:
    sample = c["sample"]
    if int(sample["n"]) < 1:
        raise ConfigError(f"sample.n must be >= 1, got {sample['n']}")
    if int(sample["batch_size"]) < 1 or int(sample["shard_size"]) < 1:
        raise ConfigError("sample.batch_size and sample.shard_size must be >= 1")
    m = c["model"]
    if "_target_" not in m and m.get("kind") not in BUILDERS:
        raise ConfigError(f"model.kind '{m.get('kind')}' is unknown; choose one of {sorted(BUILDERS)} "
                          "or set model._target_=your_pkg.YourDenoiser")
    autocast = (c.get("speed") or {}).get("autocast")
    if autocast is not None and autocast not in AUTOCAST_CHOICES:
        raise ConfigError(f"speed.autocast must be null, {' or '.join(AUTOCAST_CHOICES)}; got '{autocast}'")
    check_device(c["device"])


def _check_schedule_names(c: dict) -> None:
    kinds = available()
    if c["schedule"] != "ld3" and c["schedule"] not in kinds:
        raise ConfigError(f"schedule '{c['schedule']}' is unknown; use ld3 or one of {kinds}")
    if c["teacher"]["discretization"] not in kinds:
        raise ConfigError(f"teacher.discretization '{c['teacher']['discretization']}' is unknown; choose one of "
                          f"{kinds}")
    for name in c["eval"]["compare"]:
        if name != "ld3" and name not in kinds:
            raise ConfigError(f"eval.compare has unknown schedule '{name}'; use ld3 or one of {kinds}")
