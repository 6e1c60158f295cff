"""UniPC multistep (Zhao et al. 2023), data prediction, B(h) variants ``bh1`` / ``bh2``, orders 1-3.

Sigma-space form (``alpha = 1``), ``lambda = -log sigma``, step ``s = sigma_i -> t = sigma_{i+1}``,
``h = lambda_t - lambda_s``; previous points k = 1..p-1 give ``r_k = (lambda_{i-k} - lambda_i) / h``
and ``D1_k = (D_{i-k} - D_i) / r_k``.  With ``hh = -h``, ``phi = expm1(hh)`` and
``B(h) = hh`` (bh1) or ``expm1(hh)`` (bh2), the vector ``b_k = k! phi_{k+1}(hh) / B(h)``
(``phi_1 = phi/hh - 1`` and ``phi_{k+1} = phi_k / hh - 1/(k+1)!`` recursively) and the matrix
``R[k, j] = r_j^k`` define

* predictor (UniP): ``x_t = e^{-h} x - phi D_i - B(h) sum_k rho^p_k D1_k``,
  ``rho^p = R[:-1,:-1]^{-1} b[:-1]`` (``[1/2]`` at order 2, none at order 1);
* corrector (UniC): evaluate ``D_t = D(x_t, sigma_eval_{i+1})`` and redo the update with
  ``D1_t = D_t - D_i`` appended (``r = 1``), ``rho^c = R^{-1} b`` (``[1/2]`` at order 1).

The corrected state is not re-evaluated: ``D_t`` is reused as the next step's model value,
so NFE = N.  The last step has no corrector (nothing would use its evaluation).  Step i
uses order ``min(order, i + 1)`` and, with ``lower_order_final``, at most ``N - i``.
Global order: ``order + 1`` with the corrector.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

from ..errors import ConfigError
from ..utils.option_schema import FLAG, Option, one_of
from .base import LOWER_ORDER_FINAL, resolve_lower_order_final, step_order
from .multistep import MultistepSolver, table

VARIANTS = ("bh1", "bh2")
RHO_GRADIENTS = ("full", "stopped")
_RHO_GRADIENT: ContextVar[str] = ContextVar("unipc_rho_gradient", default="full")


@contextmanager
def rho_gradient(mode: str) -> Iterator[None]:
    """Within the block, the gradient through UniPC's weights ``rho`` is ``mode``: ``full`` (exact) or ``stopped``.

    ``rho`` solves ``R rho = b`` with ``R[k, j] = r_j^k`` in the step-size ratios ``r_j``.  ``stopped`` builds
    ``R`` from detached ratios, so the time steps get no gradient through that solve; everything else (``h`` in
    ``b``, ``B(h)`` and ``e^{-h}``, the divisions by ``r_k``, the network's evaluations) still carries it.  This is
    the gradient of the official LD3 code, whose UniPC builds ``R`` from ``torch.tensor(rks)``, a detached copy.
    Values are the same in both modes; only training sees the difference.
    """
    if mode not in RHO_GRADIENTS:
        raise ConfigError(f"the UniPC rho gradient must be one of {RHO_GRADIENTS}, got '{mode}'")
    token = _RHO_GRADIENT.set(mode)
    try:
        yield
    finally:
        _RHO_GRADIENT.reset(token)


def _unipc_coefficients(h, rks, variant):
    """Return (phi, B_h, rhos_p or None, rhos_c) for one step.  ``rks``: list of r_k then 1."""
    hh = -h
    phi = torch.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ConfigError(f"unipc variant must be one of {VARIANTS}, got '{variant}'")
    p = len(rks)
    h_phi_k = phi / hh - 1
    fact = 1
    b = []
    for k in range(1, p + 1):
        b.append(h_phi_k * fact / b_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    b = torch.stack(b)
    r = torch.stack(rks)
    R = torch.stack([r ** k for k in range(p)])  # R[k, j] = r_j^k
    if p == 1:
        rhos_p = None
        rhos_c = torch.full((1,), 0.5, dtype=h.dtype, device=h.device)
    else:
        if p == 2:
            rhos_p = torch.full((1,), 0.5, dtype=h.dtype, device=h.device)
        else:
            rhos_p = torch.linalg.solve_ex(R[:-1, :-1], b[:-1]).result  # _ex: no error check, no host sync
        rhos_c = torch.linalg.solve_ex(R, b).result
    return phi, b_h, rhos_p, rhos_c


def unipc_coefficients(sigmas, order, variant, lower_order_final, corrector):
    """UniPC's table (data form) on ``sigmas``: with ``d1s_k = (D_{i-k} - D_i) / r_k`` the predictor weight of
    ``E_k = D_{i-k} - D_i`` is ``-B(h) rho^p_k / r_k``, the corrector's ``-B(h) rho^c_k / r_k`` and, on the new
    evaluation ``D_{i+1} - D_i``, ``-B(h) rho^c_last``.  Inside :func:`rho_gradient` ``("stopped")`` the ``rho`` come
    from detached ratios (same values, less gradient)."""
    n = sigmas.numel() - 1
    lof = resolve_lower_order_final(lower_order_final, n)
    lam = -torch.log(sigmas)
    stopped = _RHO_GRADIENT.get() == "stopped"  # see rho_gradient
    a, b, pred, pterms, corr, cterms = [], [], [], [], [], []
    for i in range(n):
        o = step_order(order, i, n, lof)
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, o)] + [torch.ones_like(h)]
        phi, b_h, rhos_p, rhos_c = _unipc_coefficients(h, [r.detach() for r in rks] if stopped else rks, variant)
        a.append(torch.exp(-h))
        b.append(-phi)
        pred.append([] if rhos_p is None else [-b_h * rhos_p[k - 1] / rks[k - 1] for k in range(1, o)])
        pterms.append(o - 1)
        if corrector and i < n - 1:
            corr.append([-b_h * rhos_c[-1]] + [-b_h * rhos_c[k - 1] / rks[k - 1] for k in range(1, o)])
            cterms.append(o - 1)
    return table("data", a, b, pred, pterms, history=max(order, 1), corr=corr if corrector else None,
                 corr_terms=cterms)


class UniPC(MultistepSolver):
    name = "unipc"
    orders = (1, 2, 3)
    default_order = 3
    description = "UniPC multistep predictor-corrector (bh1/bh2), orders 1-3, 1 NFE per step"

    options = (
        Option("variant", "bh2", one_of(VARIANTS),
               "B(h) of the update: bh2 (diffusers' default; robust at NFE <= 10) or bh1 (the LD3 paper's CIFAR10)."),
        LOWER_ORDER_FINAL,
        Option("corrector", True, FLAG, "Apply the UniC corrector (it reuses the next evaluation: no extra NFE)."),
    )

    def table(self, sigmas, order, variant, lower_order_final, corrector):
        return unipc_coefficients(sigmas, int(order), variant, lower_order_final, corrector)

    def learns_coefficients(self, options) -> bool:
        return int(options["order"]) >= 2 or bool(options["corrector"])


