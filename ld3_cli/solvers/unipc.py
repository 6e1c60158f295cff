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

import torch

from ..errors import ConfigError
from .base import Evaluator, SolverSpec, prepare_grid, resolve_lower_order_final, scale, step_order


def _unipc_coefficients(h, rks, variant):
    """Return (phi, B_h, rhos_p or None, rhos_c) for one step.  ``rks``: list of r_k then 1."""
    hh = -h
    phi = torch.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ConfigError(f"unipc variant must be 'bh1' or 'bh2', got '{variant}'")
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


def sample_unipc(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
                 order=3, variant="bh2", lower_order_final="auto", corrector=True):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    ev = Evaluator(denoiser, sigmas_eval, cond, x.shape[0], x.dtype)
    n = sigmas.numel() - 1
    lof = resolve_lower_order_final(lower_order_final, n)
    lam = -torch.log(sigmas)
    models = [ev(x, 0)]  # D at the current and previous grid points (latest last)
    for i in range(n):
        den = models[-1]
        if callback is not None:
            callback(i, x, den)
        o = step_order(order, i, n, lof)
        h = lam[i + 1] - lam[i]
        rks = [(lam[i - k] - lam[i]) / h for k in range(1, o)] + [torch.ones_like(h)]
        d1s = [(models[-1 - k] - den) / scale(rks[k - 1], x) for k in range(1, o)]
        phi, b_h, rhos_p, rhos_c = _unipc_coefficients(h, rks, variant)
        x_base = scale(torch.exp(-h), x) * x - scale(phi, x) * den
        x_pred = x_base
        if rhos_p is not None:
            x_pred = x_base - scale(b_h, x) * sum(scale(rhos_p[k], x) * d1s[k] for k in range(o - 1))
        if i == n - 1:
            return x_pred
        model_t = ev(x_pred, i + 1)
        if corrector:
            corr = scale(rhos_c[-1], x) * (model_t - den)
            for k in range(o - 1):
                corr = corr + scale(rhos_c[k], x) * d1s[k]
            x = x_base - scale(b_h, x) * corr
        else:
            x = x_pred
        models = (models + [model_t])[-3:]
    return x


class UniPC(SolverSpec):
    name = "unipc"
    orders = (1, 2, 3)
    default_order = 3
    description = "UniPC multistep predictor-corrector (bh1/bh2), orders 1-3, 1 NFE per step"

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
            order=3, variant="bh2", lower_order_final="auto", corrector=True, **_):
        return sample_unipc(denoiser, x, sigmas, sigmas_eval, cond, callback, check, int(order), variant,
                            lower_order_final, corrector)


