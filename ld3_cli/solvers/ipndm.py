"""Improved PNDM (iPNDM; Zhang & Chen 2023, as used by diff-sampler / LD3), orders 1-4, in sigma-space.

Slopes (the Evaluator's noise estimates; ``d_i = (x_i - D(x_i, sigma_i)) / sigma_i`` without
decoupling) are combined with the fixed
Adams-Bashforth weights of equal steps, warm-started with lower orders
(``order_i = min(order, i + 1)``):

* 1: ``d_i``;  2: ``(3 d_i - d_{i-1}) / 2``;  3: ``(23 d_i - 16 d_{i-1} + 5 d_{i-2}) / 12``;
* 4: ``(55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24``;  ``x <- x + (sigma_{i+1} - sigma_i) * slope``.

NFE = N.  The fixed weights are exact only for equal steps; on the non-uniform grids used in
practice the variable-step error limits the global order to ``min(order, 2)`` (the ``deis`` solver has the
exact variable-step Adams-Bashforth weights).
"""
from __future__ import annotations

import torch

from .multistep import MultistepSolver, table

AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def ipndm_coefficients(sigmas, order):
    """iPNDM's table (noise form): ``b_i = sigma_{i+1} - sigma_i`` and the weight of ``eps_{i-k} - eps_i`` is
    ``b_i w_k`` with the Adams-Bashforth weights ``w`` of order ``min(order, i + 1)`` (they sum to 1)."""
    n = sigmas.numel() - 1
    steps = torch.diff(sigmas)
    ones = torch.ones_like(steps)
    pred, terms = [], []
    for i in range(n):
        w = AB_WEIGHTS[min(order, i + 1)]
        pred.append([steps[i] * wk for wk in w[1:]])
        terms.append(len(w) - 1)
    return table("noise", list(ones), list(steps), pred, terms, history=order)


class IPNDM(MultistepSolver):
    name = "ipndm"
    orders = (1, 2, 3, 4)
    default_order = 3
    description = "improved PNDM (fixed Adams-Bashforth weights in sigma), orders 1-4, 1 NFE per step"

    def table(self, sigmas, order):
        return ipndm_coefficients(sigmas, int(order))

    def learns_coefficients(self, options) -> bool:
        return int(options["order"]) >= 2
