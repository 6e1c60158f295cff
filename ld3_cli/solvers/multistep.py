"""Linear multistep solvers as coefficient tables: one runner for Euler, DPM-Solver++, UniPC, iPNDM and DEIS.

Every one of these solvers updates the sigma-space state with a linear combination of the current state
and the stored network outputs ``F`` (data predictions ``D`` or noise estimates ``eps``).  Step ``i``
(``sigma_i -> sigma_{i+1}``, ``i = 0..N-1``) with history ``F_i, F_{i-1}, ...``:

    predictor   x^p_{i+1} = a_i x_i + b_i F_i + sum_{j>=1} P[i, j-1] (F_{i-j} - F_i)
    corrector   x_{i+1}   = a_i x_i + b_i F_i + C[i, 0] (F^p_{i+1} - F_i) + sum_{j>=1} C[i, j] (F_{i-j} - F_i)

where ``F^p_{i+1}`` is the network output at ``x^p_{i+1}`` (UniPC, data form only; it is reused as step
``i + 1``'s ``F``, so the corrector costs no evaluation; the last step has none).  ``form="data"``: ``F = D`` with
``a_i = sigma_{i+1} / sigma_i`` and ``b_i = 1 - a_i``; ``form="noise"``: ``F = eps`` with ``a_i = 1`` and
``b_i = sigma_{i+1} - sigma_i``.  Writing the history as differences ``F_{i-j} - F_i`` makes a constant
network output exact for *any* ``P`` and ``C`` (the weights on ``F`` sum to ``b_i``), so learned
corrections (:mod:`ld3_cli.ld3.coefficients`) keep that property by construction.

``pred_terms[i]`` / ``corr_terms[i]`` (plain ints) say how many history differences step ``i`` uses:
the base solvers' warm-up and lower-order final steps use fewer than ``P``'s width (their entries are
zero and skipped); a learned table uses every available one.  All coefficients are float64 functions of
``sigmas``, differentiable, so time steps and coefficients can be learned together.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from ..errors import ConfigError
from .base import ANALYTIC_FIRST, DEFAULT_NOISE_ESTIMATE, Evaluator, SolverSpec, analytic_first, prepare_grid

Tensor = torch.Tensor
FORMS = ("data", "noise")


@dataclass(frozen=True)
class MultistepCoefficients:
    """The coefficient table of a linear multistep run over ``N`` steps (module docstring).

    form: ``"data"`` or ``"noise"``.  a, b: ``[N]``.  pred: ``[N, K - 1]`` (``K`` = history length).
    corr: ``[N - 1, K]`` or ``None`` (no corrector).  pred_terms / corr_terms: history differences used per step.
    to_zero: the table has one step more than its grid, the last one from the grid's final sigma onto 0
    (k-diffusion's and ComfyUI's convention: their sigma lists end with 0; see :mod:`~ld3_cli.solvers.stock`).
    """

    form: str
    a: Tensor
    b: Tensor
    pred: Tensor
    corr: Optional[Tensor]
    pred_terms: tuple
    corr_terms: tuple = ()
    to_zero: bool = False

    def __post_init__(self):
        n = self.a.shape[0]
        if self.form not in FORMS:
            raise ConfigError(f"multistep form must be one of {FORMS}, got '{self.form}'")
        if self.b.shape != (n,) or self.pred.dim() != 2 or self.pred.shape[0] != n or len(self.pred_terms) != n:
            raise ConfigError(f"inconsistent multistep table: a {tuple(self.a.shape)}, b {tuple(self.b.shape)}, "
                              f"pred {tuple(self.pred.shape)}, {len(self.pred_terms)} step term counts")
        if self.corr is not None and self.form != "data":
            raise ConfigError("a corrector needs form='data' (the reused evaluation is a data prediction)")
        if self.corr is not None and (self.corr.shape != (max(n - 1, 0), self.pred.shape[1] + 1)
                                      or len(self.corr_terms) != max(n - 1, 0)):
            raise ConfigError(f"corrector table {tuple(self.corr.shape)} does not fit {n} steps of history "
                              f"{self.pred.shape[1] + 1}")

    @property
    def steps(self) -> int:
        return int(self.a.shape[0])

    @property
    def grid_steps(self) -> int:
        """Steps of the sigma grid the table runs on (``steps - 1`` for a table that ends with a step onto 0)."""
        return self.steps - 1 if self.to_zero else self.steps

    @property
    def history(self) -> int:
        """``K``: the most network outputs one step combines."""
        return int(self.pred.shape[1]) + 1

    def widen(self, history: int) -> "MultistepCoefficients":
        """The same solver with room for ``history`` network outputs per step (zero weights on the new slots)."""
        extra = int(history) - self.history
        if extra <= 0:
            return self
        pad = self.pred.new_zeros(self.pred.shape[0], extra)
        corr = None if self.corr is None else torch.cat([self.corr, self.corr.new_zeros(self.corr.shape[0], extra)], 1)
        return replace(self, pred=torch.cat([self.pred, pad], 1), corr=corr)

    def full(self) -> "MultistepCoefficients":
        """The same table with every available history slot in use (what a learned table needs)."""
        k = self.history - 1
        return replace(self, pred_terms=tuple(min(i, k) for i in range(self.steps)),
                       corr_terms=tuple(min(i, k) for i in range(self.steps - 1)) if self.corr is not None else ())


def table(form: str, a: list, b: list, pred: list, pred_terms: list, history: int, corr: Optional[list] = None,
          corr_terms: Optional[list] = None, to_zero: bool = False) -> MultistepCoefficients:
    """Assemble a table from per-step scalars (0-d tensors) and lists of history weights (padded with zeros)."""
    ref = a[0]
    zero = torch.zeros((), dtype=ref.dtype, device=ref.device)

    def rows(entries, width):
        return torch.stack([torch.stack(list(r) + [zero] * (width - len(r))) if width else zero.new_zeros(0)
                            for r in entries]) if entries else zero.new_zeros(0, width)

    return MultistepCoefficients(form, torch.stack(a), torch.stack(b), rows(pred, history - 1),
                                 None if corr is None else rows(corr, history), tuple(pred_terms),
                                 tuple(corr_terms or ()), to_zero)


def run_multistep(ev: Evaluator, x: Tensor, c: MultistepCoefficients, callback=None, residual=None) -> Tensor:
    """Integrate with table ``c`` from ``x`` at ``sigmas[0]``; returns the state at ``sigmas[N]``.  ``residual``: a
    :class:`~ld3_cli.solvers.residual.ResidualOperator` whose step ``i`` adds to the affine part ``a_i x_i + b_i F_i``
    (a ``to_zero`` table's last step onto 0 included)."""
    cast = {k: None if v is None else v.to(device=x.device, dtype=x.dtype) for k, v in
            (("a", c.a), ("b", c.b), ("pred", c.pred), ("corr", c.corr))}
    noise = c.form == "noise"
    hist: list[Tensor] = []  # F_i, F_{i-1}, ... (latest first)
    den = ev(x, 0)
    for i in range(c.steps):
        if callback is not None:
            callback(i, x, den)
        f = ev.eps(x, den, i) if noise else den
        hist = ([f] + hist)[:c.history]
        diffs = [h - f for h in hist[1:]]
        base = cast["a"][i] * x + cast["b"][i] * f
        r = None if residual is None else residual.step(i, x, hist, *_step_sigmas(ev.sigmas, i))
        if r is not None:
            base = base + r
        x_pred = base + _combine(cast["pred"][i], diffs[:c.pred_terms[i]])
        if i == c.steps - 1:
            return x_pred
        den = ev(x_pred, i + 1)
        if cast["corr"] is None:
            x = x_pred
            continue
        w = cast["corr"][i]
        # the next step reuses den (evaluated at x_pred) as its F: the corrector costs no evaluation
        x = base + w[0] * (den - f) + _combine(w[1:], diffs[:c.corr_terms[i]])
    return x


def _step_sigmas(sigmas: Tensor, i: int) -> tuple[Tensor, Tensor]:
    """``(sigma_i, sigma_{i+1})`` of step ``i`` (``sigma_{i+1} = 0`` on a ``to_zero`` table's extra last step)."""
    return sigmas[i], sigmas[i + 1] if i + 1 < sigmas.numel() else sigmas.new_zeros(())


def _combine(weights: Tensor, diffs: list) -> Tensor | float:
    out: Tensor | float = 0.0
    for k, d in enumerate(diffs):
        out = out + weights[k] * d
    return out


def sample_multistep(denoiser, x, sigmas, coefficients: MultistepCoefficients, sigmas_eval=None, cond=None,
                     callback=None, check=True, eval_scales=None, noise_estimate=DEFAULT_NOISE_ESTIMATE,
                     analytic_first: bool = False, residual=None) -> Tensor:
    """Run an explicit coefficient table (a base solver's or a learned one) as a solver (``analytic_first``: grid
    point 0 is not evaluated, see :class:`~ld3_cli.solvers.base.Evaluator`; ``residual``: :func:`run_multistep`)."""
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    if coefficients.grid_steps != sigmas.numel() - 1:
        raise ConfigError(f"the coefficient table runs on {coefficients.grid_steps} grid steps, the grid has "
                          f"{sigmas.numel() - 1}")
    ev = Evaluator(denoiser, sigmas, sigmas_eval, cond, x, eval_scales, noise_estimate, analytic_first)
    return run_multistep(ev, x, coefficients, callback, residual)


class MultistepSolver(SolverSpec):
    """A solver that is a coefficient table: subclasses define :meth:`table` (keyword arguments: ``order`` and
    the solver's declared ``options``, all of them but the run's, ``analytic_first``); running it, learning
    corrections to it and exporting it need nothing else."""

    run_options = (ANALYTIC_FIRST,)

    def table(self, sigmas, **options) -> MultistepCoefficients:  # pragma: no cover - abstract
        raise NotImplementedError

    def coefficients(self, sigmas, **options) -> MultistepCoefficients:
        """The table on ``sigmas`` with ``options`` (the defaults for those not given; an unknown name is refused,
        the values are the caller's, checked where they entered)."""
        return self.table(sigmas, **self.table_options(self.resolve_options(options, values=False)))

    def table_options(self, options: dict) -> dict:
        """``options`` without the run's (what :meth:`table` takes)."""
        return {k: v for k, v in options.items() if k not in {o.name for o in self.run_options}}

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True, eval_scales=None,
            noise_estimate=DEFAULT_NOISE_ESTIMATE, **options):
        sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)  # the table needs the prepared grid
        return sample_multistep(denoiser, x, sigmas, self.table(sigmas, **self.table_options(options)), sigmas_eval,
                                cond, callback, False, eval_scales, noise_estimate,
                                analytic_first(options))
