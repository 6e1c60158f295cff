"""A solver with everything one run needs bound to it: what a learned (or baseline) schedule *is*.

:class:`Sampler` holds the solver name and options, the grid ``sigmas``, the decoupled evaluation
(``sigmas_eval``, ``eval_scales``, ``noise_estimate``; see :class:`~ld3_cli.solvers.base.Evaluator`) and,
for a learned solver, its full coefficient table (:class:`~ld3_cli.solvers.multistep.MultistepCoefficients`) and,
with a learned residual, its per-step networks (:class:`~ld3_cli.solvers.residual.ResidualOperator`).
``sampler.solve(denoiser, x, cond)`` runs exactly that from ``x`` at ``sigmas[0]``.  ``tensors()`` /
``from_tensors()`` round-trip it through a flat ``{name: tensor}`` dict (the store's safetensors) and
``plain()`` gives its non-tensor facts (the store's JSON).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from ..errors import ConfigError
from .base import DEFAULT_NOISE_ESTIMATE, analytic_first
from .multistep import MultistepCoefficients, sample_multistep
from .residual import ResidualOperator

Tensor = torch.Tensor
_TABLE = ("a", "b", "pred", "corr")


@dataclass
class Sampler:
    """``solver`` + ``options`` on ``sigmas`` ``[N + 1]``, evaluated at ``sigmas_eval`` (``None`` = ``sigmas``)
    with state scales ``eval_scales``; ``coefficients`` replaces the solver's own table when set; ``residual`` (only
    with ``coefficients``) adds its correction to every step of that table."""

    solver: str
    sigmas: Tensor
    options: dict = field(default_factory=dict)
    sigmas_eval: Optional[Tensor] = None
    eval_scales: Optional[Tensor] = None
    noise_estimate: str = DEFAULT_NOISE_ESTIMATE
    coefficients: Optional[MultistepCoefficients] = None
    residual: Optional[ResidualOperator] = None

    def __post_init__(self):
        if self.residual is not None and self.coefficients is None:
            raise ConfigError("a residual operator runs on a coefficient table: this sampler has none")

    @property
    def steps(self) -> int:
        return int(self.sigmas.numel()) - 1

    @property
    def analytic_first(self) -> bool:
        """Whether grid point 0 is skipped (the solver option ``analytic_first``)."""
        return analytic_first(self.options)

    @property
    def evaluation_sigmas(self) -> Tensor:
        """Where the network is evaluated (``sigmas`` when not decoupled)."""
        return self.sigmas if self.sigmas_eval is None else self.sigmas_eval

    def table(self) -> Optional[MultistepCoefficients]:
        """The multistep table this sampler runs: the learned one, else the solver's own on ``sigmas``
        (``None`` for a solver that is not a linear multistep method, Heun)."""
        return self.coefficients if self.coefficients is not None else self.base_table()

    def base_table(self) -> Optional[MultistepCoefficients]:
        """The solver's own table on ``sigmas`` (what learned coefficients correct; ``None`` for Heun)."""
        from . import get_solver

        try:
            return get_solver(self.solver).coefficients(self.sigmas.to(torch.float64), **self.options)
        except ConfigError:
            return None

    def detached(self) -> "Sampler":
        """The same sampler with every tensor detached and on the CPU (dtypes and ``None`` fields kept)."""
        def cpu(t):
            return None if t is None else t.detach().cpu()

        c = self.coefficients
        if c is not None:
            c = replace(c, a=cpu(c.a), b=cpu(c.b), pred=cpu(c.pred), corr=cpu(c.corr))
        return replace(self, sigmas=cpu(self.sigmas), options=dict(self.options), sigmas_eval=cpu(self.sigmas_eval),
                       eval_scales=cpu(self.eval_scales), coefficients=c,
                       residual=None if self.residual is None else self.residual.detached())

    def solve(self, denoiser, x: Tensor, cond=None, callback=None, check: bool = True) -> Tensor:
        """The final state from ``x`` (the state at ``sigmas[0]``); ``check=False`` skips the grid validation
        (no host synchronisation: the trainer's grids are valid by construction)."""
        if self.coefficients is not None:
            return sample_multistep(denoiser, x, self.sigmas, self.coefficients, self.sigmas_eval, cond, callback,
                                    check, eval_scales=self.eval_scales, noise_estimate=self.noise_estimate,
                                    analytic_first=self.analytic_first, residual=self.residual)
        from . import solve

        return solve(self.solver, denoiser, x, self.sigmas, self.sigmas_eval, cond, callback, check,
                     eval_scales=self.eval_scales, noise_estimate=self.noise_estimate, **self.options)

    # -- round trip ---------------------------------------------------------------------------
    def tensors(self) -> dict:
        """Flat float64 tensors: ``sigmas``, ``sigmas_eval`` (always), ``eval_scales``, ``coef.*`` and ``residual.*``
        when set."""
        out = {"sigmas": self.sigmas, "sigmas_eval": self.sigmas if self.sigmas_eval is None else self.sigmas_eval}
        if self.eval_scales is not None:
            out["eval_scales"] = self.eval_scales
        c = self.coefficients
        if c is not None:
            out.update({f"coef.{k}": getattr(c, k) for k in _TABLE if getattr(c, k) is not None})
        if self.residual is not None:
            out.update(self.residual.tensors())
        return {k: v.detach().to("cpu", torch.float64) for k, v in out.items()}

    def plain(self) -> dict:
        """The non-tensor facts (JSON-able)."""
        d = {"solver": self.solver, "options": dict(self.options), "noise_estimate": self.noise_estimate,
             "learned_coefficients": self.coefficients is not None}
        if self.coefficients is not None:
            c = self.coefficients
            d["coefficients"] = {"form": c.form, "pred_terms": list(c.pred_terms), "corr_terms": list(c.corr_terms)}
            if c.to_zero:
                d["coefficients"]["to_zero"] = True
        if self.residual is not None:
            d["residual"] = self.residual.config()
        return d

    @classmethod
    def from_tensors(cls, tensors: dict, plain: dict) -> "Sampler":
        """Inverse of :meth:`tensors` + :meth:`plain` (raises ConfigError on an inconsistent table)."""
        coefficients = None
        info = plain.get("coefficients")
        if info is not None:
            if "coef.a" not in tensors:
                raise ConfigError("a learned-coefficient sampler without its coefficient tensors")
            coefficients = MultistepCoefficients(info["form"], tensors["coef.a"], tensors["coef.b"],
                                                 tensors["coef.pred"], tensors.get("coef.corr"),
                                                 tuple(info["pred_terms"]), tuple(info.get("corr_terms", ())),
                                                 bool(info.get("to_zero", False)))
        residual = plain.get("residual")
        residual = None if residual is None else ResidualOperator.from_tensors(tensors, residual).requires_grad_(False)
        return cls(plain["solver"], tensors["sigmas"], dict(plain.get("options", {})), tensors.get("sigmas_eval"),
                   tensors.get("eval_scales"), plain.get("noise_estimate", DEFAULT_NOISE_ESTIMATE), coefficients,
                   residual)
