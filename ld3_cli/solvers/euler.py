"""Euler in sigma-space == DDIM (first-order exponential integrator, data prediction).

Step ``sigma_i -> sigma_{i+1}``: ``x <- x + (sigma_{i+1} - sigma_i) eps_i`` with the noise estimate
``eps_i = (x_i - D(x_i, sigma_i)) / sigma_i``, i.e. ``x <- r x + (1 - r) D`` with ``r = sigma_{i+1} / sigma_i``.
This is both the Euler step of ``dx/dsigma = (x - D) / sigma`` and the DDIM update, so one
function serves both names.  With decoupled evaluation times ``eps_i`` is the Evaluator's noise
estimate (see :class:`~ld3_cli.solvers.base.Evaluator`).  NFE = N.  Global order 1.
"""
from __future__ import annotations

import torch

from .base import Evaluator, SolverSpec, prepare_grid
from .multistep import run_multistep, table


def euler_coefficients(sigmas):
    """Euler's table (noise form, no history): ``x <- x + (sigma_{i+1} - sigma_i) eps_i``."""
    steps = torch.diff(sigmas)
    return table("noise", list(torch.ones_like(steps)), list(steps), [[] for _ in steps], [0] * len(steps), history=1)


def sample_euler(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
                 eval_scales=None, noise_estimate="step"):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    ev = Evaluator(denoiser, sigmas, sigmas_eval, cond, x, eval_scales, noise_estimate)
    return run_multistep(ev, x, euler_coefficients(sigmas), callback)


class Euler(SolverSpec):
    name = "euler"
    orders = (1,)
    default_order = 1
    description = "Euler / DDIM: first order, 1 NFE per step"

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
            eval_scales=None, noise_estimate="step", **_):
        return sample_euler(denoiser, x, sigmas, sigmas_eval, cond, callback, check, eval_scales, noise_estimate)

    def coefficients(self, sigmas, **_):
        return euler_coefficients(sigmas)
