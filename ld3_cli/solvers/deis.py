"""DEIS rho-AB (Zhang & Chen 2023) in sigma-space: variable-step Adams-Bashforth on ``dx/dsigma = eps``.

In EDM sigma-space the probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma``, the
"rho" form of DEIS with ``rho = sigma``.  Step i integrates the Lagrange polynomial through
the last ``p = min(order, i + 1)`` slopes exactly:

    x_{i+1} = x_i + sum_j d_{i-j} * integral_{sigma_i}^{sigma_{i+1}} l_j(s) ds

where ``l_j`` is the Lagrange basis on nodes ``sigma_i, ..., sigma_{i-p+1}``.  The integrals
use 3-point Gauss-Legendre quadrature, exact for the cubic ``l_j`` of order 4.  NFE = N.
Global order = ``order`` on any grid.
"""
from __future__ import annotations

import torch

from .multistep import MultistepSolver, table

_GL_NODES = (-(0.6 ** 0.5), 0.0, 0.6 ** 0.5)
_GL_WEIGHTS = (5 / 9, 8 / 9, 5 / 9)


def lagrange_integrals(nodes, a, b):
    """``[integral_a^b l_j(s) ds for j]`` for the Lagrange basis on ``nodes`` (1-D float64 tensors)."""
    p = len(nodes)
    mid, half = 0.5 * (a + b), 0.5 * (b - a)
    out = []
    for j in range(p):
        total = torch.zeros((), dtype=a.dtype, device=a.device)
        for g, w in zip(_GL_NODES, _GL_WEIGHTS):
            s = mid + half * g
            term = torch.ones((), dtype=a.dtype, device=a.device)
            for m in range(p):
                if m != j:
                    term = term * (s - nodes[m]) / (nodes[j] - nodes[m])
            total = total + w * term
        out.append(total * half)
    return out


def deis_coefficients(sigmas, order):
    """DEIS's table (noise form): ``w_j`` the Lagrange integrals, ``b_i = sum_j w_j`` (= the step) and the
    weight of ``eps_{i-j} - eps_i`` is ``w_j``."""
    n = sigmas.numel() - 1
    a, b, pred, terms = [], [], [], []
    for i in range(n):
        p = min(order, i + 1)
        w = lagrange_integrals([sigmas[i - j] for j in range(p)], sigmas[i], sigmas[i + 1])
        a.append(torch.ones_like(sigmas[i]))
        b.append(sum(w[1:], w[0]))
        pred.append(w[1:])
        terms.append(p - 1)
    return table("noise", a, b, pred, terms, history=order)


class DEIS(MultistepSolver):
    name = "deis"
    orders = (1, 2, 3, 4)
    default_order = 3
    description = "DEIS rho-AB (variable-step Adams-Bashforth in sigma), orders 1-4, 1 NFE per step"

    def table(self, sigmas, order):
        return deis_coefficients(sigmas, int(order))

    def learns_coefficients(self, options) -> bool:
        return int(options["order"]) >= 2
