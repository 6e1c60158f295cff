"""Improved PNDM (iPNDM; Zhang & Chen 2023, as used by diff-sampler / LD3), orders 1-4, in sigma-space.

Slopes ``d_i = (x_i - D(x_i, sigma_eval_i)) / sigma_i`` are combined with the fixed
Adams-Bashforth weights of equal steps, warm-started with lower orders
(``order_i = min(order, i + 1)``):

* 1: ``d_i``;  2: ``(3 d_i - d_{i-1}) / 2``;  3: ``(23 d_i - 16 d_{i-1} + 5 d_{i-2}) / 12``;
* 4: ``(55 d_i - 59 d_{i-1} + 37 d_{i-2} - 9 d_{i-3}) / 24``;  ``x <- x + (sigma_{i+1} - sigma_i) * slope``.

NFE = N.  The fixed weights are exact only for equal steps; on the non-uniform grids used in
practice the variable-step error limits the global order to ``min(order, 2)`` (see
``variable_step=True`` for the exact variable-step Adams-Bashforth weights, i.e. ``deis``).
"""
from __future__ import annotations

from .base import Evaluator, SolverSpec, prepare_grid, scale

AB_WEIGHTS = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def sample_ipndm(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True, order=4):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    ev = Evaluator(denoiser, sigmas_eval, cond, x.shape[0], x.dtype)
    n = sigmas.numel() - 1
    slopes = []  # d_i, d_{i-1}, ... (latest first)
    for i in range(n):
        s = scale(sigmas[i], x)
        den = ev(x, i)
        if callback is not None:
            callback(i, x, den)
        slopes = ([(x - den) / s] + slopes)[:order]
        w = AB_WEIGHTS[min(order, i + 1)]
        slope = sum(wk * dk for wk, dk in zip(w, slopes))
        x = x + scale(sigmas[i + 1] - sigmas[i], x) * slope
    return x


class IPNDM(SolverSpec):
    name = "ipndm"
    orders = (1, 2, 3, 4)
    default_order = 4
    description = "improved PNDM (fixed Adams-Bashforth weights in sigma), orders 1-4, 1 NFE per step"

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True, order=4, **_):
        return sample_ipndm(denoiser, x, sigmas, sigmas_eval, cond, callback, check, int(order))
