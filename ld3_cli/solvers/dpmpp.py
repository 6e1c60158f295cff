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
from ..utils.option_schema import Option, one_of
from .base import LOWER_ORDER_FINAL, resolve_lower_order_final, step_order
from .multistep import MultistepSolver, table

SOLVER_TYPES = ("midpoint", "heun")
COEFFICIENT_KINDS = ("reference", "exact")


def dpmpp_coefficients(sigmas, order, lower_order_final, solver_type, coefficients):
    """DPM-Solver++'s table (data form) on ``sigmas`` (float64, differentiable); see the module docstring.

    In history differences ``E_j = D_{i-j} - D_i``: order 2 adds ``-c / r0 * E_1`` (``c = -phi1 / 2`` midpoint,
    ``phi1 / h + 1`` heun); order 3 adds ``(-phi2 / r0 - k (1/r0 + 1/r1)) E_1 + (k / r1) E_2`` with
    ``k = (phi2 r0 - c3 phi3) / (r0 + r1)``, which is ``phi2 D1 - c3 phi3 D2`` rewritten.
    """
    if solver_type not in SOLVER_TYPES:
        raise ConfigError(f"dpmpp solver_type must be 'midpoint' or 'heun', got '{solver_type}'")
    if coefficients not in COEFFICIENT_KINDS:
        raise ConfigError(f"dpmpp coefficients must be 'reference' or 'exact', got '{coefficients}'")
    c3 = 1.0 if coefficients == "reference" else 2.0
    n = sigmas.numel() - 1
    lof = resolve_lower_order_final(lower_order_final, n)
    hs = torch.diff(-torch.log(sigmas))
    a, b, pred, terms = [], [], [], []
    for i in range(n):
        o = step_order(order, i, n, lof)
        h = hs[i]
        phi1 = torch.expm1(-h)
        a.append(torch.exp(-h))
        b.append(-phi1)
        if o == 1:
            w = []
        elif o == 2:
            c = -0.5 * phi1 if solver_type == "midpoint" else phi1 / h + 1
            w = [-c / (hs[i - 1] / h)]
        else:
            r0, r1 = hs[i - 1] / h, hs[i - 2] / h
            phi2 = phi1 / h + 1
            phi3 = phi2 / h - 0.5
            k = (phi2 * r0 - c3 * phi3) / (r0 + r1)
            w = [-phi2 / r0 - k * (1 / r0 + 1 / r1), k / r1]
        pred.append(w)
        terms.append(o - 1)
    return table("data", a, b, pred, terms, history=max(order, 1))


class DPMSolverPP(MultistepSolver):
    name = "dpmpp"
    orders = (1, 2, 3)
    default_order = 3
    description = "DPM-Solver++ multistep (data prediction), orders 1-3, 1 NFE per step"
    options = (
        LOWER_ORDER_FINAL,
        Option("solver_type", "midpoint", one_of(SOLVER_TYPES),
               "Form of the 2nd-order update: midpoint (DPM-Solver's 'dpmsolver') or heun ('taylor')."),
        Option("coefficients", "reference", one_of(COEFFICIENT_KINDS), "reference (the D2 weight of DPM-Solver, "
               "k-diffusion and diffusers; 2nd-order accurate) or exact (the Taylor weight; 3rd order)."),
    )

    def table(self, sigmas, order, lower_order_final, solver_type, coefficients):
        return dpmpp_coefficients(sigmas, int(order), lower_order_final, solver_type, coefficients)

    def learns_coefficients(self, options) -> bool:
        return int(options["order"]) >= 2
