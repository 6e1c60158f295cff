"""DPM-Solver++ multistep (Lu et al. 2022), data prediction, orders 1-3, in sigma-space.

With ``lambda = -log sigma`` and ``h = lambda_{i+1} - lambda_i``, ``phi1 = expm1(-h)``:

* order 1: ``x <- e^{-h} x - phi1 D_i``   (DDIM)
* order 2: ``r0 = h_{i-1}/h``, ``D1 = (D_i - D_{i-1}) / r0``;
  ``midpoint``: ``x <- e^{-h} x - phi1 D_i - phi1 D1 / 2``; ``heun``: ``... + (phi1/h + 1) D1``
* order 3: ``r0 = h_{i-1}/h, r1 = h_{i-2}/h``; first and second divided differences
  ``D1 = D1_0 + r0 (D1_0 - D1_1)/(r0 + r1)``, ``D2 = (D1_0 - D1_1)/(r0 + r1)``,
  ``phi2 = phi1/h + 1``, ``phi3 = phi2/h - 1/2``; ``x <- e^{-h} x - phi1 D_i + phi2 D1 - c phi3 D2``

  ``coefficients="reference"`` (default) uses ``c = 1``, the weight of the DPM-Solver,
  k-diffusion and diffusers implementations (so results match them and the LD3 paper).
  Since ``D2 ~ h^2 D''/2`` while the exact integral of the Taylor term is ``-h^2 phi3 D''``,
  that weight is half the Taylor coefficient and the method is second-order accurate (with a
  smaller constant than 2M).  ``coefficients="exact"`` uses ``c = 2`` and is third order;
  tests/solvers/test_solver_convergence.py measures both.

Step i uses order ``min(order, i + 1)`` and, with ``lower_order_final``, at most ``N - i``.
NFE = N (one evaluation per step).  Global order: ``order`` (order 3: see ``coefficients``).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import Evaluator, SolverSpec, prepare_grid, resolve_lower_order_final, scale, step_order


def sample_dpmpp(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
                 order=2, lower_order_final="auto", solver_type="midpoint", coefficients="reference"):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    if solver_type not in ("midpoint", "heun"):
        raise ConfigError(f"dpmpp solver_type must be 'midpoint' or 'heun', got '{solver_type}'")
    if coefficients not in ("reference", "exact"):
        raise ConfigError(f"dpmpp coefficients must be 'reference' or 'exact', got '{coefficients}'")
    c3 = 1.0 if coefficients == "reference" else 2.0
    ev = Evaluator(denoiser, sigmas_eval, cond, x.shape[0], x.dtype)
    n = sigmas.numel() - 1
    lof = resolve_lower_order_final(lower_order_final, n)
    lam = -torch.log(sigmas)
    hs = lam[1:] - lam[:-1]
    prev = []  # denoised outputs D_{i-2}, D_{i-1}
    for i in range(n):
        den = ev(x, i)
        if callback is not None:
            callback(i, x, den)
        o = step_order(order, i, n, lof)
        h = hs[i]
        phi1 = torch.expm1(-h)
        x = scale(torch.exp(-h), x) * x - scale(phi1, x) * den
        if o >= 2:
            r0 = hs[i - 1] / h
            d1_0 = (den - prev[-1]) / scale(r0, x)
            if o == 2:
                c = -0.5 * phi1 if solver_type == "midpoint" else phi1 / h + 1
                x = x + scale(c, x) * d1_0
            else:
                r1 = hs[i - 2] / h
                d1_1 = (prev[-1] - prev[-2]) / scale(r1, x)
                diff = d1_0 - d1_1
                d1 = d1_0 + scale(r0 / (r0 + r1), x) * diff
                d2 = scale(1 / (r0 + r1), x) * diff
                phi2 = phi1 / h + 1
                phi3 = phi2 / h - 0.5
                x = x + scale(phi2, x) * d1 - scale(c3 * phi3, x) * d2
        prev = (prev + [den])[-2:]
    return x


class DPMSolverPP(SolverSpec):
    name = "dpmpp"
    orders = (1, 2, 3)
    default_order = 2
    description = "DPM-Solver++ multistep (data prediction), orders 1-3, 1 NFE per step"

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
            order=2, lower_order_final="auto", solver_type="midpoint", coefficients="reference", **_):
        return sample_dpmpp(denoiser, x, sigmas, sigmas_eval, cond, callback, check, int(order),
                            lower_order_final, solver_type, coefficients)
