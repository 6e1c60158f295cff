"""``TrainOptions``: the trainer's settings (the ``train`` config group).

``configs/train/default.yaml`` is where a user reads and changes them (each documented there); the
dataclass gives library users the same defaults (tests/ld3/test_trainer_options.py checks they agree)
and :meth:`TrainOptions.validate` refuses impossible values before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from ..errors import ConfigError

DEFAULT_INIT_CANDIDATES = ("logsnr", "edm", "time_uniform", "time_quadratic")
LEARNABLE = ("steps", "offsets", "coefficients")
OFFSETS_OPTIMIZERS = ("rmsprop", "sgd")


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
    val_batch_size: int = 0
    lr: float = 5e-3
    momentum: float = 0.9
    offsets_optimizer: str = "rmsprop"
    lr_offsets: float = 0.005
    lr_coefficients: float = 0.005
    coefficient_history: int = 0
    coefficient_constraint: bool = True
    lr_decay: float = 0.8
    min_lr: float = 5e-5
    patience: int = 5
    grad_clip: float = 1.0
    iters_phase1: int = 50
    iters_phase2: int = 125
    iters_phase3: int = 175
    alternate_rounds: int = 0
    win_rate: float = 0.5
    offset_units: str = "window"
    eval_scale: str = "model"
    noise_estimate: str = "eval"
    gamma: float = 0.001
    r: Optional[float] = None
    shift_lr: Optional[float] = None
    val_every: int = 1
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
        """Refuse impossible settings (the CLI runs this before any model loads)."""
        bad = sorted(set(self.learn) - set(LEARNABLE))
        if bad or not self.learn:
            raise ConfigError(f"train.learn must be a non-empty subset of {list(LEARNABLE)}, got {list(self.learn)}")
        if self.offsets_optimizer not in OFFSETS_OPTIMIZERS:
            raise ConfigError(f"train.offsets_optimizer must be one of {OFFSETS_OPTIMIZERS}, "
                              f"got '{self.offsets_optimizer}'")
        if int(self.alternate_rounds) < 0:
            raise ConfigError(f"train.alternate_rounds must be >= 0, got {self.alternate_rounds}")
        if int(self.batch_size) < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if not 0 < float(self.val_fraction) < 1:
            raise ConfigError(f"train.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.r is not None and float(self.r) < 0:
            raise ConfigError(f"train.r must be >= 0 (0 = hard loss), got {self.r}")

    def total_iterations(self) -> int:
        from .phases import plan_phases

        return sum(p.budget for p in plan_phases(self))
