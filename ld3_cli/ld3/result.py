"""``LearnedSchedule``: what training produced and how it was found."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..solvers.sampler import Sampler


@dataclass
class LearnedSchedule:
    """Result of training: what was learned (:class:`~ld3_cli.solvers.sampler.Sampler`) and how it was found."""

    sampler: Sampler
    nfe: int
    param: str
    loss: str
    init: str
    init_val: float
    best_val: float
    baselines: dict                  # name -> {"train": loss, "val": loss}
    learn: tuple = ("steps", "offsets")
    best_phase: str = ""
    history: list = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    radius: float = 0.0
    stopped: str = ""
    eval_scale: str = "model"
    offset_units: str = "window"
    window_fractions: list = field(default_factory=list)
    after_phase: dict = field(default_factory=dict)       # phase -> best validation loss when it ended
    phase_samplers: dict = field(default_factory=dict)    # phase -> the best sampler when it ended
    restarts: list = field(default_factory=list)          # train.restarts > 1: one dict per restart (restarts.py)

    @property
    def solver(self) -> str:
        return self.sampler.solver

    @property
    def solver_options(self) -> dict:
        return self.sampler.options

    @property
    def sigmas(self) -> torch.Tensor:
        return self.sampler.sigmas

    @property
    def sigmas_eval(self) -> torch.Tensor:
        s = self.sampler
        return s.sigmas if s.sigmas_eval is None else s.sigmas_eval

    @property
    def eval_scales(self) -> Optional[torch.Tensor]:
        return self.sampler.eval_scales

    def solve(self, denoiser, x: torch.Tensor, cond=None) -> torch.Tensor:
        """Run exactly what was learned from ``x`` (the state at ``sigma_max``)."""
        return self.sampler.solve(denoiser, x, cond)

    def with_restarts(self, record: list) -> "LearnedSchedule":
        """This result with the record of ``train.restarts`` (:func:`~ld3_cli.ld3.restarts.best_restart`); a single
        run keeps none."""
        self.restarts = list(record) if len(record) > 1 else []
        return self

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("sampler", "history", "phase_samplers")}
        d.update({"solver": self.solver, "solver_options": self.solver_options, "sigmas": self.sigmas.tolist(),
                  "sigmas_eval": self.sigmas_eval.tolist(), "learn": list(self.learn),
                  "eval_scales": None if self.eval_scales is None else self.eval_scales.tolist(),
                  "noise_estimate": self.sampler.noise_estimate,
                  "learned_coefficients": self.sampler.coefficients is not None,
                  "residual": None if self.sampler.residual is None else self.sampler.residual.config()})
        return d
