"""Checks of the ``train`` options (:class:`~ld3_cli.ld3.trainer.TrainOptions` as plain data) before any work.

:func:`check_train_options` refuses unknown names and impossible values with one
:class:`~ld3_cli.errors.ConfigError` line, so the CLI's preflight stops a bad ``train.*`` before a
model loads.  The vocabularies come from where they are defined: ``param`` from
:data:`~ld3_cli.ld3.parameterization.SPACES`, ``loss`` from :data:`~ld3_cli.ld3.losses.LOSSES`,
``offsets_optimizer`` from :data:`~ld3_cli.ld3.optim.OFFSET_OPTIMIZERS`, ``init`` and
``init_candidates`` from the registered discretizations.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from ..errors import ConfigError
from ..schedules import available
from .losses import LOSSES
from .optim import OFFSET_OPTIMIZERS
from .parameterization import SPACES
from .trainer import TrainOptions

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
        "val_batch_size": _whole(0),
        "lr": _number(lambda v: v > 0, "> 0"),
        "momentum": _number(lambda v: 0 <= v < 1, "in [0, 1)"),
        "offsets_optimizer": _one_of(OFFSET_OPTIMIZERS),
        "lr_offsets": _number(lambda v: v > 0, "> 0"),
        "lr_decay": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
        "min_lr": _number(lambda v: v >= 0, ">= 0"),
        "patience": _whole(1),
        "grad_clip": _number(lambda v: v > 0, "> 0"),
        "iters_phase1": _whole(0),
        "iters_phase2": _whole(0),
        "decoupled": ((lambda v: isinstance(v, bool)), "true or false"),
        "win_rate": _number(lambda v: 0 <= v <= 1, "in [0, 1]"),
        "gamma": _number(lambda v: v >= 0, ">= 0"),
        "r": _number(lambda v: v >= 0, ">= 0 (0 = hard loss)", optional=True),
        "shift_lr": _number(lambda v: v > 0, "> 0", optional=True),
        "val_every": _whole(1),
        "grad_checkpoint": ((lambda v: v in ("auto", True, False)), "auto, true or false"),
        "seed": _whole(),
    }


def check_train_options(options: Mapping[str, Any]) -> TrainOptions:
    """``TrainOptions`` of ``options`` (a ``train`` config as plain data), every value checked.

    Raises :class:`ConfigError` for an unknown option or a value outside its range, naming both.
    """
    opts = TrainOptions.from_dict(dict(options))
    for name, (holds, what) in option_rules(available()).items():
        value = getattr(opts, name)
        if not holds(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"train.{name} must be {what}, got {shown!r}")
    return opts
