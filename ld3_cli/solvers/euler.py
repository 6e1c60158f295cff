"""Euler in sigma-space == DDIM (first-order exponential integrator, data prediction).

Step ``sigma_i -> sigma_{i+1}``: ``x <- r x + (1 - r) D(x_i, sigma_eval_i)`` with ``r = sigma_{i+1} / sigma_i``.
This is both the Euler step of ``dx/dsigma = (x - D) / sigma`` and the DDIM update, so one
function serves both names.  NFE = N.  Global order 1.
"""
from __future__ import annotations

from .base import Evaluator, SolverSpec, prepare_grid, scale


def sample_euler(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    ev = Evaluator(denoiser, sigmas_eval, cond, x.shape[0], x.dtype)
    ratios = sigmas[1:] / sigmas[:-1]
    for i in range(sigmas.numel() - 1):
        d = ev(x, i)
        if callback is not None:
            callback(i, x, d)
        r = scale(ratios[i], x)
        x = r * x + (1 - r) * d
    return x


class Euler(SolverSpec):
    name = "euler"
    orders = (1,)
    default_order = 1
    description = "Euler / DDIM: first order, 1 NFE per step"

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True, **_):
        return sample_euler(denoiser, x, sigmas, sigmas_eval, cond, callback, check)
