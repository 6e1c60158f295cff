"""The schedule being exported and the plain-data record every format is written from.

Conventions (those of the whole package):

* ``sigmas[0..N]``: the solver's grid, EDM noise levels (``x = x0 + sigma * n``), strictly
  decreasing from ``sigma_max`` to ``sigma_min > 0``; ``N`` steps.
* ``sigmas_eval[0..N]``: where the solver evaluates the network at step ``i`` (LD3's decoupled
  times; equal to ``sigmas`` for a baseline).  Only ``sigmas_eval[0..N-1]`` are used, except by a stock-sampler
  schedule (``to_zero``), whose last step evaluates at ``sigmas_eval[N] == sigmas[N]``.
* ``t``: the model's native time (``NoiseSchedule.t``); ``lambda = -log(sigma)`` (log-SNR).
* ``eval_scales[0..N]`` (optional): the state scale of each decoupled evaluation, and
  ``coefficients``: the solver's multistep table (learned, or the solver's own) -- ``schedule.json``
  carries them, and the runners written beside it (``ld3_sampler.py``, ``ld3_kdiffusion.py``,
  ``ld3_diffusers.py``, the ComfyUI node pack) run all of it; the sigma lists for stock samplers carry the
  time steps only and say so.
* ``to_zero``: the solver is a stock k-diffusion sampler (``k_euler``, ``k_dpmpp_2m``, ``k_heun``) whose list
  is the grid plus a final 0 (:attr:`ExportSchedule.stock_sigmas`); such a schedule was trained for that
  stock sampler and runs there exactly.
* ``residual`` (optional): the learned residual operator (:mod:`~ld3_cli.solvers.residual`): its sizes and, per
  step, its convolution weights as nested lists; the runners add it to each step of the table, a stock sampler
  cannot.  A record with one is version 5 (older runners refuse it), one without stays version 4.
* ``analytic_first``: the first step takes no network evaluation (the solver option of that name; ``sigmas_eval[0]``
  is unused and the NFE is ``N - 1``); the runners do it, a stock sampler cannot.
* ``network``: how the model's network is called (space, prediction, time fed at ``sigmas_eval``;
  :func:`~ld3_cli.models.conventions.network_convention`), for the diffusers scheduler.

Numbers are written with ``repr(float)`` (shortest text that reads back to the same float64),
so every text format round-trips bit-exactly; :func:`decimal_text` gives the same without an
exponent, for parsers that do not read ``1e-05``.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..schedules.noise import NoiseSchedule
from ..solvers import SOLVERS
from ..solvers.base import DEFAULT_NOISE_ESTIMATE, analytic_first
from ..solvers.multistep import MultistepCoefficients
from ..solvers.residual import PARTS as RESIDUAL_PARTS
from ..solvers.residual import ResidualOperator
from ..solvers.stock import STOCK_SAMPLERS

RECORD_FORMAT = "ld3-schedule"
RECORD_VERSION = 4  # 2: eval_scales, noise_estimate and the coefficient table; 3: to_zero, network, trained_for;
# 4: analytic_first
RESIDUAL_RECORD_VERSION = 5  # a record that holds a residual operator


def _finite(v: float) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ConfigError(f"cannot export the non-finite value {v}; the schedule is corrupt -- retrain it")
    return v


def py_float(v: float) -> str:
    """Shortest Python/JSON literal of ``v`` that parses back to the same float64."""
    return repr(_finite(v))


def decimal_text(v: float) -> str:
    """Shortest positional (no exponent) decimal of ``v`` that parses back to the same float64."""
    return np.format_float_positional(_finite(v), unique=True, trim="0")


def wrap(text: str, width: int = 100, indent: str = "", hang: str = "") -> list[str]:
    """``text`` as lines of at most ``width`` characters, the first indented by ``indent``, the rest by
    ``indent + hang`` (for docstrings of written files)."""
    return textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent + hang,
                         break_on_hyphens=False, break_long_words=False)


def float_list(values, fmt=py_float) -> str:
    """``[a, b, ...]`` with every value formatted by ``fmt``."""
    return "[" + ", ".join(fmt(v) for v in values) + "]"


@dataclass
class ExportSchedule:
    """A schedule and its context.

    Attributes:
        name: ``ld3`` or the baseline's name.
        sigmas, sigmas_eval: float64 tensors ``[N + 1]`` (see the module docstring).
        noise_schedule: the model's :class:`NoiseSchedule` (native time, kind).
        solver, solver_options, nfe: the sampler the schedule is meant for.
        model, model_key: the model's config name and store key.
        provenance: where the numbers come from (artifact key / path / command, ...).
        eval_scales, noise_estimate: the decoupled evaluation (see :class:`~ld3_cli.solvers.base.Evaluator`).
        coefficients: the multistep table the solver runs (``None`` for Heun); learned_coefficients: whether
            it was learned (else it is the solver's own on ``sigmas``).
        residual: the learned residual operator on that table, or ``None``.
    """

    name: str
    sigmas: torch.Tensor
    sigmas_eval: torch.Tensor
    noise_schedule: NoiseSchedule
    solver: str
    solver_options: dict
    nfe: int
    model: str
    model_key: str
    provenance: dict = field(default_factory=dict)
    eval_scales: Optional[torch.Tensor] = None
    noise_estimate: str = DEFAULT_NOISE_ESTIMATE
    coefficients: Optional[MultistepCoefficients] = None
    learned_coefficients: bool = False
    network: Optional[dict] = None
    residual: Optional[ResidualOperator] = None

    def __post_init__(self):
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten().cpu()
        self.sigmas_eval = torch.as_tensor(self.sigmas_eval, dtype=torch.float64).flatten().cpu()
        s = self.sigmas
        if s.numel() < 2 or not bool(torch.all(s > 0)) or not bool(torch.all(s[1:] < s[:-1])):
            raise ConfigError(f"schedule '{self.name}' is not a strictly decreasing list of >= 2 positive sigmas "
                              f"({s.tolist()}); regenerate it")
        if self.sigmas_eval.shape != s.shape or not bool(torch.all(self.sigmas_eval > 0)):
            raise ConfigError(f"schedule '{self.name}': sigmas_eval must be {s.numel()} positive values; regenerate it")
        if self.residual is not None and (self.coefficients is None or self.residual.steps != self.coefficients.steps):
            raise ConfigError(f"schedule '{self.name}': its residual operator needs the table it was trained on "
                              f"({self.residual.steps} steps), got "
                              f"{'none' if self.coefficients is None else f'{self.coefficients.steps} steps'}; "
                              "export the sampler that training stored (`ld3 export`)")

    # -- derived quantities -----------------------------------------------------------------
    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    @property
    def t(self) -> torch.Tensor:
        return self.noise_schedule.t(self.sigmas)

    @property
    def t_eval(self) -> torch.Tensor:
        return self.noise_schedule.t(self.sigmas_eval)

    @property
    def lambdas(self) -> torch.Tensor:
        return -torch.log(self.sigmas)

    @property
    def lambdas_eval(self) -> torch.Tensor:
        return -torch.log(self.sigmas_eval)

    @property
    def kind(self) -> str:
        """The noise-schedule kind (``edm``, ``vp_discrete``, ``vp_linear``, ``vp_cosine``, ``flow``)."""
        return self.noise_schedule.kind

    @property
    def to_zero(self) -> bool:
        """Whether the solver is a stock sampler whose list ends with 0 (the grid plus one step onto 0)."""
        spec = SOLVERS.get(self.solver)
        return bool(spec is not None and spec.ends_at_zero)

    @property
    def analytic_first(self) -> bool:
        """Whether the run skips the evaluation at ``sigmas[0]`` (the solver option ``analytic_first``)."""
        return analytic_first(self.solver_options)

    @property
    def stock_sigmas(self) -> list:
        """The list to hand a stock sampler: the grid, plus the final 0 of a stock-sampler schedule."""
        return self.sigmas.tolist() + ([0.0] if self.to_zero else [])

    def trained_for(self) -> dict:
        """``{"sampler": ld3 solver, "stock": {library: sampler} or None}``: where the schedule runs as validated."""
        return {"sampler": self.solver, "stock": STOCK_SAMPLERS.get(self.solver)}

    def comfyui_rounds_time(self) -> bool:
        """Whether ComfyUI would feed this discrete-time model a rounded time the schedule was not trained on."""
        return self.kind == "vp_discrete" and (self.network or {}).get("time_rounding") != "nearest"

    def stock_warning(self) -> Optional[str]:
        """Why a stock sampler on these sigmas is not what ld3 validated (``None`` for a stock-sampler schedule without
        a residual operator)."""
        if self.to_zero and self.residual is None:
            return None
        return (f"this schedule was trained for ld3's {self.solver_short()}, not for a stock sampler: a stock "
                "sampler on these sigmas runs another method (docs/export.md measures what that loses). Run it "
                "exactly with ld3_kdiffusion.sample_ld3 / ld3_diffusers.LD3Scheduler / the comfyui_ld3 node, or "
                "train for the stock sampler: ld3 train solver=k_dpmpp_2m (or k_euler, k_heun)")

    def slug(self) -> str:
        """``<model>-<schedule>-<solver><order>[-afs]-nfe<N>[-<key>]``: a file name for this schedule."""
        order = self.solver_options.get("order")
        key = str(self.provenance.get("artifact_key") or "")[:8]
        afs = "afs" if self.analytic_first else ""
        return "-".join(p for p in (self.model, self.name, f"{self.solver}{order or ''}", afs, f"nfe{self.nfe}", key)
                        if p)

    def decoupled_gap(self) -> float:
        """Largest relative difference ``|sigma_eval_i / sigma_i - 1|`` over the evaluated points ``i < N`` (not
        point 0 with the analytic first step)."""
        first = 1 if self.analytic_first else 0
        gaps = (self.sigmas_eval[first:-1] / self.sigmas[first:-1] - 1).abs()
        return float(gaps.max()) if gaps.numel() else 0.0

    def time_steps_only(self) -> list[str]:
        """What a format that carries only the time steps loses (empty: nothing), one sentence each."""
        out = []
        gap = self.decoupled_gap()
        if gap > 0:
            out.append(f"ld3's decoupled evaluation times sigmas_eval (up to {gap:.3g} relative from the grid)")
        if self.eval_scales is not None and float((self.eval_scales - 1).abs().max()) > 0:
            out.append("the state scales of those evaluations (eval_scales, up to "
                       f"{float((self.eval_scales - 1).abs().max()):.3g} from 1)")
        if self.analytic_first:
            out.append("the analytic first step: ld3 takes the first step without a network evaluation, a stock "
                       "sampler evaluates the network at sigma_max (one evaluation more)")
        if self.residual is not None:
            out.append("the learned residual operator: a small network ld3 adds to each step (the runners written "
                       "beside schedule.json run it)")
        if self.learned_coefficients:
            out.append(f"the learned solver coefficients: this schedule was learned together with {self.solver}'s "
                       "multistep weights, and another sampler's own weights are not what was learned")
        return out

    def solver_short(self) -> str:
        """``unipc order 3`` (the solver and its order), for prose."""
        order = self.solver_options.get("order")
        return f"{self.solver} order {order}" if order is not None else self.solver

    def solver_label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.solver_options.items()))
        return f"{self.solver} ({opts})" if opts else self.solver

    def made_for(self) -> str:
        """The sentence naming the schedule, its solver and NFE (opens the docstring of each snippet)."""
        return (f"Schedule {self.name!r}, made for ld3's {self.solver_label()} at NFE {self.nfe} ({self.steps} "
                f"steps); exported by ld3 {__version__}.")

    def record(self) -> dict[str, Any]:
        """The JSON-ready description (what ``schedule.json`` holds)."""
        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION if self.residual is None else RESIDUAL_RECORD_VERSION,
            "schedule": self.name,
            "sigmas": self.sigmas.tolist(),
            "sigmas_eval": self.sigmas_eval.tolist(),
            "t": self.t.tolist(),
            "t_eval": self.t_eval.tolist(),
            "lambdas": self.lambdas.tolist(),
            "lambdas_eval": self.lambdas_eval.tolist(),
            "steps": self.steps,
            "nfe": int(self.nfe),
            "solver": self.solver,
            "solver_options": dict(self.solver_options),
            "model": self.model,
            "model_key": self.model_key,
            "noise_schedule": self.noise_schedule.to_dict(),
            "eval_scales": None if self.eval_scales is None else self.eval_scales.tolist(),
            "noise_estimate": self.noise_estimate,
            "learned_coefficients": self.learned_coefficients,
            "coefficients": _table(self.coefficients),
            "residual": _residual(self.residual),
            "to_zero": self.to_zero,
            "analytic_first": self.analytic_first,
            "stock_sigmas": self.stock_sigmas,
            "trained_for": self.trained_for(),
            "network": self.network,
            "provenance": dict(self.provenance),
            "conventions": ("sigmas: EDM noise levels (x = x0 + sigma * noise), sigma_max first, ending at "
                            "sigma_min; the solver steps on sigmas and evaluates the network at sigmas_eval[i] "
                            "for step i < steps (sigmas_eval[steps] is unused unless to_zero); t: the model's native "
                            "time; lambdas = -log(sigma); eval_scales / noise_estimate / coefficients: how the "
                            "solver evaluates the network and combines its outputs, residual: the network ld3 adds "
                            "to each step (ld3_sampler.py runs them); "
                            "to_zero: the run ends with a step onto 0 (stock_sigmas is the list a stock sampler "
                            "takes); analytic_first: the first step takes no network evaluation (its noise estimate is "
                            "x / sqrt(1 + sigmas[0]^2)); network: how the model's network is called (ld3_diffusers.py "
                            "reads it)"),
        }


def _residual(op: Optional[ResidualOperator]) -> Optional[dict]:
    """The operator's sizes and, per step from ``first`` on, ``{part: nested list}`` (float32 values written as
    float64 text)."""
    if op is None:
        return None
    return {**op.config(), "weights": [{name: op.part(i, name).detach().double().tolist() for name in RESIDUAL_PARTS}
                                       for i in op.covered()]}


def _table(c: Optional[MultistepCoefficients]) -> Optional[dict]:
    if c is None:
        return None
    return {"form": c.form, "a": c.a.tolist(), "b": c.b.tolist(), "pred": c.pred.tolist(),
            "corr": None if c.corr is None else c.corr.tolist(), "pred_terms": list(c.pred_terms),
            "corr_terms": list(c.corr_terms), "to_zero": c.to_zero}
