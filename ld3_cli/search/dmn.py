"""DMN time steps (Xue et al., CVPR 2024, "Accelerating Diffusion Sampling with Optimized Time Steps").

DMN picks the interior log-SNRs ``lambda_1 .. lambda_{N-1}`` (``lambda = -log sigma``; for VP
models this is ``log(alpha_t / sigma_t)``) that minimise an upper bound on the error a
multistep data-prediction exponential integrator makes when it replaces the data-prediction
curve by its Lagrange interpolant.  The variant here is the one LD3 ships as its ``dmn``
baseline (``StepOptim``):

* ``E_n = exp(lambda_n)``, ``h_n = lambda_{n+1} - lambda_n``, ``H0(h) = e^h - 1``,
  ``H1(h) = h e^h - H0(h)``, ``H2(h) = h^2 e^h - 2 H1(h)``.
* Step ``s`` (``lambda_s -> lambda_{s+1}``) interpolates over ``p`` nodes ``lambda_{s-p+1} .. lambda_s``
  with ``p = 1`` for the first and last step, ``2`` for the second and second-to-last, else 3.
  ``J_{s,k} = int_{lambda_s}^{lambda_{s+1}} e^lambda l_k(lambda) dlambda`` (closed forms in
  :func:`step_integrals`); they sum to ``E_{s+1} - E_s``.
* Node weights ``w_n`` from the VP-equivalent ``alpha_n = (1 + e^{-2 lambda_n})^{-1/2}``,
  ``sigma_n = (1 + e^{2 lambda_n})^{-1/2}``: ``sigma_n / alpha_n`` (= EDM sigma) for pixel
  models, ``sigma_n^2 / alpha_n`` for latent models.
* Objective: ``sum |w_s J_s|`` over first-order steps, plus for higher-order steps with
  ``s < truncNum`` the Euclidean norm of ``(w_k J_{s,k})_k``, plus ``sum_n |c_n|`` where ``c_n``
  accumulates the signed ``w_n J_{s,n}`` of the higher-order steps with ``s >= truncNum``;
  ``truncNum = 3`` for ``N <= 7`` else 0.
* Minimised by ``scipy.optimize.minimize(method="trust-constr")`` under the linear constraints
  ``lambda_0 <= lambda_1 <= ... <= lambda_N`` with finite-difference gradients and BFGS,
  scipy's defaults otherwise (the objective is non-smooth; results depend slightly on the
  scipy version).  Init: uniform ``lambda`` (pixel) or uniform native time ``t`` (latent).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import LinearConstraint, minimize

from ..errors import ConfigError
from ..schedules.discretize import endpoints, register
from ..schedules.noise import NoiseSchedule


def _h0(h):
    return np.expm1(h)


def _h1(h):
    return h * np.exp(h) - _h0(h)


def _h2(h):
    return h * h * np.exp(h) - 2.0 * _h1(h)


def step_order(s: int, n_steps: int) -> int:
    """Interpolation order of step ``s`` (0-based) of ``n_steps``: 1 at both ends, 2 next to them, else 3."""
    if s in (0, n_steps - 1):
        return 1
    if s in (1, n_steps - 2):
        return 2
    return 3


def trunc_num(n_steps: int) -> int:
    """LD3's rule: steps ``s < truncNum`` are bounded per step (norm), the rest share signed sums."""
    return 3 if n_steps <= 7 else 0


def node_weights(lam: np.ndarray, latent: bool) -> np.ndarray:
    """``w_n``: ``sigma_n / alpha_n`` (pixel) or ``sigma_n^2 / alpha_n`` (latent), VP-equivalent alpha, sigma."""
    lam = np.asarray(lam, dtype=np.float64)
    alpha = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam))
    sigma = 1.0 / np.sqrt(1.0 + np.exp(2.0 * lam))
    return (sigma ** 2 if latent else sigma) / alpha


def step_integrals(lam: np.ndarray, s: int, order: int) -> tuple[float, ...]:
    """``(J_{s,k})_k`` for the nodes ``lambda_{s-order+1} .. lambda_s`` (oldest first) of step ``s``.

    ``lam`` is the full increasing log-SNR list ``lambda_0 .. lambda_N``.
    """
    e_s = math.exp(lam[s])
    h = lam[s + 1] - lam[s]
    if order == 1:
        return (math.exp(lam[s + 1]) - e_s,)
    b = lam[s] - lam[s - 1]
    if order == 2:
        return (-e_s * _h1(h) / b, e_s * (_h1(h) + b * _h0(h)) / b)
    if order == 3:
        a = lam[s - 1] - lam[s - 2]
        h0, h1, h2 = _h0(h), _h1(h), _h2(h)
        return (e_s * (h2 + b * h1) / (a * (a + b)),
                -e_s * (h2 + (a + b) * h1) / (a * b),
                e_s * (h2 + (2 * b + a) * h1 + b * (a + b) * h0) / (b * (a + b)))
    raise ValueError(f"order must be 1, 2 or 3, got {order}")


def dmn_objective(lam: np.ndarray, latent: bool) -> float:
    """DMN error bound for the full increasing log-SNR list ``lam = (lambda_0, ..., lambda_N)``."""
    lam = np.asarray(lam, dtype=np.float64)
    n = lam.size - 1
    w = node_weights(lam, latent)
    trunc = trunc_num(n)
    total = 0.0
    c = np.zeros(n + 1)
    for s in range(n):
        p = step_order(s, n)
        js = step_integrals(lam, s, p)
        nodes = range(s - p + 1, s + 1)
        if p == 1:
            total += abs(w[s] * js[0])
        elif s < trunc:
            total += math.sqrt(sum((w[k] * j) ** 2 for k, j in zip(nodes, js)))
        else:
            for k, j in zip(nodes, js):
                c[k] += w[k] * j
    return float(total + np.abs(c).sum())


@dataclass
class DMNResult:
    """Optimised log-SNRs (increasing, endpoints pinned), the init, objectives and scipy's report."""

    lambdas: np.ndarray
    init: np.ndarray
    objective: float
    init_objective: float
    n_iter: int
    status: int
    message: str

    @property
    def sigmas(self) -> np.ndarray:
        """Decreasing EDM sigmas ``exp(-lambda)``."""
        return np.exp(-self.lambdas)


def _constraints(n_steps: int, lam_hi_noise: float, lam_lo_noise: float) -> LinearConstraint:
    # rows: lambda_1 >= lambda_0; lambda_{i+1} - lambda_i >= 0; -lambda_{N-1} >= -lambda_N
    mat = np.zeros((n_steps, n_steps - 1))
    for i in range(n_steps - 1):
        mat[i, i] = 1.0
        mat[i + 1, i] = -1.0
    lb = np.zeros(n_steps)
    lb[0], lb[-1] = lam_hi_noise, -lam_lo_noise
    return LinearConstraint(mat, lb, np.full(n_steps, np.inf))


def optimize_lambdas(init: np.ndarray, latent: bool, maxiter: int = 1000, gtol: float = 1e-8,
                     xtol: float = 1e-8) -> DMNResult:
    """Minimise :func:`dmn_objective` over the interior of ``init`` (increasing log-SNRs, ends fixed)."""
    init = np.asarray(init, dtype=np.float64)
    n = init.size - 1
    lam0, lam_n = float(init[0]), float(init[-1])
    if n < 2:
        return DMNResult(init.copy(), init.copy(), dmn_objective(init, latent), dmn_objective(init, latent), 0, 0,
                         "no interior time steps to optimise")

    def objective(interior):
        return dmn_objective(np.concatenate(([lam0], interior, [lam_n])), latent)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trust-constr's delta_grad / singular-Jacobian chatter
        res = minimize(objective, init[1:-1], method="trust-constr", constraints=[_constraints(n, lam0, lam_n)],
                       options={"maxiter": int(maxiter), "gtol": gtol, "xtol": xtol, "verbose": 0})
    lam = np.concatenate(([lam0], np.asarray(res.x, dtype=np.float64), [lam_n]))
    return DMNResult(lam, init.copy(), float(dmn_objective(lam, latent)), float(dmn_objective(init, latent)),
                     int(res.nit), int(res.status), str(res.message))


def initial_lambdas(n_steps: int, schedule: NoiseSchedule, lo: float, hi: float, latent: bool) -> np.ndarray:
    """Init: uniform log-SNR between the endpoints (pixel), or uniform native time ``t`` mapped to log-SNR (latent)."""
    lam_hi_noise, lam_lo_noise = -math.log(hi), -math.log(lo)
    if latent:
        t_hi = float(schedule.t(torch.tensor(hi, dtype=torch.float64)))
        t_lo = float(schedule.t(torch.tensor(lo, dtype=torch.float64)))
        t = torch.linspace(t_hi, t_lo, n_steps + 1, dtype=torch.float64)
        lam = -torch.log(schedule.sigma(t)).numpy()
    else:
        lam = np.linspace(lam_hi_noise, lam_lo_noise, n_steps + 1)
    lam = np.array(lam, dtype=np.float64)
    lam[0], lam[-1] = lam_hi_noise, lam_lo_noise
    return lam


def dmn_search(n_steps: int, schedule: NoiseSchedule, latent=None, sigma_min=None, sigma_max=None,
               maxiter: int = 1000) -> DMNResult:
    """Run the DMN optimisation for ``n_steps`` steps between the schedule's (or given) sigma range."""
    lo, hi = endpoints(schedule, sigma_min, sigma_max)
    latent = bool(getattr(schedule, "latent_like", False)) if latent is None else bool(latent)
    return optimize_lambdas(initial_lambdas(int(n_steps), schedule, lo, hi, latent), latent, maxiter=maxiter)


@register("dmn")
def dmn(n_steps, schedule, latent=None, sigma_min=None, sigma_max=None, maxiter: int = 1000, **_):
    """DMN schedule: float64 tensor of ``n_steps + 1`` decreasing sigmas (endpoints exact).

    ``latent`` selects the latent-model weights and init (default: ``schedule.latent_like``).
    """
    lo, hi = endpoints(schedule, sigma_min, sigma_max)
    res = dmn_search(n_steps, schedule, latent, lo, hi, maxiter)
    sig = torch.tensor(res.sigmas, dtype=torch.float64)
    sig[0], sig[-1] = hi, lo
    if not bool(torch.all(sig[1:] < sig[:-1])):
        raise ConfigError(f"DMN optimisation merged time steps for N={n_steps} ({sig.tolist()}); use fewer steps or "
                          "another discretization")
    return sig
