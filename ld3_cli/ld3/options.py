"""``TrainOptions``: the trainer's settings (the ``train`` config group), each one checked.

:class:`TrainOptions` is the one home of the defaults (``scripts/gen_train_defaults.py`` writes them into
``configs/train/default.yaml``, where each is documented).  :meth:`TrainOptions.validate` /
:func:`check_train_options` refuse unknown names and impossible values with one
:class:`~ld3_cli.errors.ConfigError` line, so the CLI's preflight stops a bad ``train.*`` before a
model loads.  The vocabularies come from where they are defined: ``param``, ``offset_units`` and
``eval_scale`` from :mod:`~ld3_cli.ld3.parameterization`, ``loss`` from :data:`~ld3_cli.ld3.losses.LOSSES`,
``offsets_optimizer`` / ``coefficients_optimizer`` from :data:`~ld3_cli.ld3.optim.OFFSET_OPTIMIZERS` /
:data:`~ld3_cli.ld3.optim.COEFFICIENT_OPTIMIZERS`, ``noise_estimate`` from the
solvers' :data:`~ld3_cli.solvers.base.NOISE_ESTIMATES`, ``init`` and ``init_candidates`` from the
registered discretizations.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Optional

from ..errors import ConfigError
from ..solvers.base import DEFAULT_NOISE_ESTIMATE, NOISE_ESTIMATES
from .losses import LOSSES
from .optim import COEFFICIENT_OPTIMIZERS, OFFSET_OPTIMIZERS
from .parameterization import EVAL_SCALES, OFFSET_UNITS, SPACES

DEFAULT_INIT_CANDIDATES = ("logsnr", "edm", "time_uniform", "time_quadratic")
LEARNABLE = ("steps", "offsets", "coefficients")

Rule = tuple[Callable[[Any], bool], str]  # (holds for a good value, what a good value is)


def _one_of(choices) -> Rule:
    choices = tuple(choices)
    return (lambda v: v in choices), f"{', '.join(map(str, choices[:-1]))} or {choices[-1]}"


def _whole(lo: Optional[int] = None) -> Rule:
    def holds(v):
        return isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)
    return holds, "a whole number" + ("" if lo is None else f" >= {lo}")


def _number(ok: Callable[[float], bool], what: str, optional: bool = False) -> Rule:
    def holds(v):
        if v is None:
            return optional
        return isinstance(v, (int, float)) and not isinstance(v, bool) and ok(float(v))
    return holds, what + (" or null" if optional else "")


def option_rules(kinds: list[str]) -> dict[str, Rule]:
    """The check of every TrainOptions field; ``kinds``: the discretizations ``init`` may name."""
    names = ["auto", *kinds]
    return {
        "param": _one_of(SPACES),
        "init": ((lambda v: v in names), f"auto or one of {kinds}"),
        "init_candidates": ((lambda v: isinstance(v, tuple) and len(v) > 0 and all(k in kinds for k in v)),
                            f"a non-empty list of {kinds}"),
        "loss": _one_of(LOSSES),
        "lpips_weights": ((lambda v: v is None or isinstance(v, str)), "a path (or null)"),
        "val_fraction": _number(lambda v: 0 < v < 1, "in (0, 1)"),
        "batch_size": _whole(1),
        "batch_size_coefficients": _whole(0),
        "val_batch_size": _whole(0),
        "lr": _number(lambda v: v > 0, "> 0"),
        "momentum": _number(lambda v: 0 <= v < 1, "in [0, 1)"),
        "offsets_optimizer": _one_of(OFFSET_OPTIMIZERS),
        "coefficients_optimizer": _one_of(COEFFICIENT_OPTIMIZERS),
        "coefficient_decay": _number(lambda v: 0 <= v < 1, "in [0, 1)"),
        "lr_offsets": _number(lambda v: v > 0, "> 0"),
        "lr_decay": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
        "min_lr": _number(lambda v: v >= 0, ">= 0"),
        "patience": _whole(1),
        "grad_clip": _number(lambda v: v > 0, "> 0"),
        "iters_phase1": _whole(0),
        "iters_phase2": _whole(0),
        "learn": ((lambda v: isinstance(v, tuple) and len(v) > 0 and set(v) <= set(LEARNABLE)),
                  f"a non-empty list of {list(LEARNABLE)}"),
        "iters_phase3": _whole(0),
        "alternate_rounds": _whole(0),
        "lr_coefficients": _number(lambda v: v > 0, "> 0"),
        "coefficient_history": _whole(0),
        "coefficient_constraint": ((lambda v: isinstance(v, bool)), "true or false"),
        "offset_units": _one_of(OFFSET_UNITS),
        "eval_scale": _one_of(EVAL_SCALES),
        "noise_estimate": _one_of(NOISE_ESTIMATES),
        "win_rate": _number(lambda v: 0 <= v <= 1, "in [0, 1]"),
        "gamma": _number(lambda v: v >= 0, ">= 0"),
        "r": _number(lambda v: v >= 0, ">= 0 (0 = hard loss)", optional=True),
        "shift_lr": _number(lambda v: v > 0, "> 0", optional=True),
        "val_every": _whole(1),
        "val_every_coefficients": _whole(1),
        "grad_checkpoint": ((lambda v: v in ("auto", True, False)), "auto, true or false"),
        "seed": _whole(),
    }



@dataclass
class TrainOptions:
    """Trainer settings: the ``train`` config group (configs/train/default.yaml documents each one).

    The YAML is the one home of the defaults a user sees; these are the same values for library use
    (a test checks that they agree).
    """

    param: str = "lambda"
    init: str = "auto"
    init_candidates: tuple = DEFAULT_INIT_CANDIDATES
    learn: tuple = ("steps", "offsets")
    loss: str = "auto"
    lpips_weights: Optional[str] = None
    val_fraction: float = 0.5
    batch_size: int = 2
    batch_size_coefficients: int = 50
    val_batch_size: int = 0
    lr: float = 5e-3
    momentum: float = 0.9
    offsets_optimizer: str = "rmsprop"
    lr_offsets: float = 0.005
    lr_coefficients: float = 0.05
    coefficients_optimizer: str = "adam"
    coefficient_decay: float = 0.0
    coefficient_history: int = 0
    coefficient_constraint: bool = True
    lr_decay: float = 0.8
    min_lr: float = 5e-5
    patience: int = 5
    grad_clip: float = 1.0
    iters_phase1: int = 50
    iters_phase2: int = 125
    iters_phase3: int = 150
    alternate_rounds: int = 0
    win_rate: float = 0.5
    offset_units: str = "window"
    eval_scale: str = "model"
    noise_estimate: str = DEFAULT_NOISE_ESTIMATE
    gamma: float = 0.001
    r: Optional[float] = None
    shift_lr: Optional[float] = None
    val_every: int = 1
    val_every_coefficients: int = 5
    grad_checkpoint: Any = "auto"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "TrainOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s) {unknown}; valid: {sorted(known)}")
        d = dict(d)
        for k in ("init_candidates", "learn"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        opts = cls(**d)
        opts.validate()
        return opts

    def validate(self) -> None:
        """Refuse an impossible value with one line naming the option and what it must be (no model loads)."""
        from ..schedules import available

        for name, (holds, what) in option_rules(available()).items():
            value = getattr(self, name)
            if not holds(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise ConfigError(f"train.{name} must be {what}, got {shown!r}")

    def total_iterations(self) -> int:
        from .phases import plan_phases

        return sum(p.budget for p in plan_phases(self))


def check_train_options(options: Mapping[str, Any]) -> TrainOptions:
    """``TrainOptions`` of ``options`` (a ``train`` config as plain data), every value checked.

    Raises :class:`ConfigError` for an unknown option or a value outside its range, naming both.
    """
    return TrainOptions.from_dict(dict(options))


def effective_learn(learn, spec) -> tuple:
    """What ``train.learn`` means for solver ``spec``: a stock sampler (``spec.evaluates_on_grid``) evaluates the
    network on its own list, so it has no decoupled times (``offsets`` is dropped) and its coefficients are the
    library's (``coefficients`` is refused with a ConfigError naming the fix)."""
    learn = tuple(learn)
    if not getattr(spec, "evaluates_on_grid", False):
        return learn
    if "coefficients" in learn:
        raise ConfigError(f"solver '{spec.name}' is a stock sampler: its coefficients are k-diffusion's and cannot be "
                          "learned; use train.learn=[steps] with it, or a learned solver with solver=dpmpp or unipc")
    return tuple(k for k in learn if k != "offsets") or ("steps",)
