"""Heun's second-order method in sigma-space (EDM, Karras et al. 2022, Alg. 1).

Each step takes an Euler predictor and averages the slopes at both ends; the last step is
plain Euler (no correction), so N steps cost ``2N - 1`` NFE and only odd NFE are possible.
Slopes are the Evaluator's noise estimates, ``d = (x - D(x, sigma)) / sigma`` without decoupling
(coefficients from ``sigmas``).  Global order 2.
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import DEFAULT_NOISE_ESTIMATE, Evaluator, SolverSpec, as_state_dtype, prepare_grid


def sample_heun(denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
                eval_scales=None, noise_estimate=DEFAULT_NOISE_ESTIMATE):
    sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
    ev = Evaluator(denoiser, sigmas, sigmas_eval, cond, x, eval_scales, noise_estimate)
    return heun_steps(ev, x, sigmas, callback)


def heun_steps(ev: Evaluator, x, steps_to, callback=None):
    """Heun over the step points ``steps_to`` (the grid, or the grid with a final 0), evaluating grid point ``i``
    through ``ev``; the last step is Euler."""
    n = steps_to.numel() - 1
    for i in range(n):
        s, s_next = as_state_dtype(steps_to[i], x), as_state_dtype(steps_to[i + 1], x)
        den = ev(x, i)
        if callback is not None:
            callback(i, x, den)
        d = ev.eps(x, den, i)
        x_pred = x + (s_next - s) * d
        if i == n - 1:
            x = x_pred
        else:
            d_next = ev.eps(x_pred, ev(x_pred, i + 1), i + 1)
            x = x + (s_next - s) * 0.5 * (d + d_next)
    return x


class Heun(SolverSpec):
    name = "heun"
    orders = (2,)
    default_order = 2
    description = "Heun (EDM): second order, 2 NFE per step, last step Euler (NFE = 2N - 1)"

    def nfe(self, n_steps: int) -> int:
        return 2 * int(n_steps) - 1

    def steps_for_nfe(self, nfe: int) -> int:
        nfe = int(nfe)
        if nfe < 1 or nfe % 2 == 0:
            raise ConfigError(f"Heun needs an odd NFE (N steps cost 2N - 1 evaluations); got nfe={nfe}. "
                              f"Use nfe={max(1, nfe - 1)} or {nfe + 1}.")
        return (nfe + 1) // 2

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
            eval_scales=None, noise_estimate=DEFAULT_NOISE_ESTIMATE, order=2):
        return sample_heun(denoiser, x, sigmas, sigmas_eval, cond, callback, check, eval_scales, noise_estimate)
