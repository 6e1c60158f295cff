"""Euler in sigma-space == DDIM (first-order exponential integrator, data prediction).

Step ``sigma_i -> sigma_{i+1}``: ``x <- x + (sigma_{i+1} - sigma_i) eps_i`` with the noise estimate
``eps_i = (x_i - D(x_i, sigma_i)) / sigma_i``, i.e. ``x <- r x + (1 - r) D`` with ``r = sigma_{i+1} / sigma_i``.
This is both the Euler step of ``dx/dsigma = (x - D) / sigma`` and the DDIM update, so one
function serves both names.  With decoupled evaluation times ``eps_i`` is the Evaluator's noise
estimate (see :class:`~ld3_cli.solvers.base.Evaluator`).  NFE = N.  Global order 1.
"""
from __future__ import annotations

import torch

from .multistep import MultistepSolver, table


def euler_coefficients(sigmas):
    """Euler's table (noise form, no history): ``x <- x + (sigma_{i+1} - sigma_i) eps_i``."""
    steps = torch.diff(sigmas)
    return table("noise", list(torch.ones_like(steps)), list(steps), [[] for _ in steps], [0] * len(steps), history=1)


class Euler(MultistepSolver):
    name = "euler"
    orders = (1,)
    default_order = 1
    description = "Euler / DDIM: first order, 1 NFE per step"

    def table(self, sigmas, order):
        return euler_coefficients(sigmas)
