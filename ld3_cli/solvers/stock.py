"""Stock samplers of k-diffusion (and so of ComfyUI, whose samplers are k-diffusion's), as ld3 solvers.

A schedule learned for one of these runs, unchanged, in the stock sampler a user already has: ``ld3 train
solver=k_dpmpp_2m`` learns the time steps under exactly the arithmetic of ``k_diffusion.sampling.sample_dpmpp_2m``
(and ComfyUI's ``dpmpp_2m``), so the exported list validates there as it did in ld3.  Their conventions:

* the sigma list ends with 0: ld3's grid ``sigmas[0..N]`` (``sigma_max .. sigma_min``) is run as
  ``[sigmas[0], ..., sigmas[N], 0]`` -- N + 1 steps, the last one onto 0 -- which is what k-diffusion's own
  ``get_sigmas_karras(n=N + 1, ...)`` lists look like (so ld3's ``edm`` baseline *is* the Karras list there);
* the network is evaluated on the list itself (no decoupled times, no state scales): only the time steps
  can be learned (``train.learn=[steps]``).

==============  ======================================================  ==========================
solver          stock sampler                                           NFE for N steps (+ onto 0)
==============  ======================================================  ==========================
``k_euler``     ``sample_euler`` / ComfyUI ``euler`` / diffusers         N + 1
                ``EulerDiscreteScheduler(sigmas=...)``
``k_dpmpp_2m``  ``sample_dpmpp_2m`` / ComfyUI ``dpmpp_2m``              N + 1
``k_heun``      ``sample_heun`` / ComfyUI ``heun``                      2 N + 1
==============  ======================================================  ==========================

``sample_dpmpp_2m`` is DPM-Solver++(2M) with a first-order first step and a first-order step onto 0 (no other
lower-order steps): ld3's ``dpmpp`` table of order 2 without ``lower_order_final``, plus that last step
(``x <- D``).  ``sample_euler`` is ld3's Euler (noise form) on the list ending at 0; ``sample_heun`` is Heun
with an Euler step onto 0.  tests/solvers/test_solver_stock.py runs k-diffusion's own functions on the same
lists where k-diffusion is installed.  For discrete-time models (DDPM, SD) ComfyUI also rounds the network's
time to the nearest training step: ``model.time_rounding=nearest`` makes ld3's model do the same.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..errors import ConfigError
from .base import DEFAULT_NOISE_ESTIMATE, Evaluator, SolverSpec, prepare_grid
from .dpmpp import dpmpp_coefficients
from .euler import euler_coefficients
from .heun import heun_steps
from .multistep import MultistepSolver, table


# ld3 solver -> where its exported list (the grid plus 0) runs exactly: library -> sampler name
STOCK_SAMPLERS = {
    "k_euler": {"k-diffusion": "sample_euler", "ComfyUI": "euler",
                "diffusers": "EulerDiscreteScheduler(timestep_spacing='linspace') with set_timesteps(sigmas=...)"},
    "k_dpmpp_2m": {"k-diffusion": "sample_dpmpp_2m", "ComfyUI": "dpmpp_2m"},
    "k_heun": {"k-diffusion": "sample_heun", "ComfyUI": "heun"},
}


_STOCK_NOTE = ". Learns the time steps only; `ld3 export` gives the list for the stock sampler"


def to_zero_grid(sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` with a final 0 appended: the list a stock sampler runs."""
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class _Stock:
    """A stock sampler: it evaluates the network on its own list, which ends with a step onto 0."""

    evaluates_on_grid = True
    ends_at_zero = True
    run_options = ()  # the stock sampler's arithmetic: it evaluates the network at every point of its list


class _EndsAtZero(_Stock):
    """NFE bookkeeping of a sampler whose list ends with a step onto 0 (one more evaluation than grid steps)."""

    def nfe(self, n_steps: int) -> int:
        return int(n_steps) + 1

    def steps_for_nfe(self, nfe: int) -> int:
        nfe = int(nfe)
        if nfe < 2:
            raise ConfigError(f"solver '{self.name}' ends with a step onto sigma 0, so it needs nfe >= 2; got "
                              f"nfe={nfe}")
        return nfe - 1


class KEuler(_EndsAtZero, MultistepSolver):
    name = "k_euler"
    orders = (1,)
    default_order = 1
    description = (f"k-diffusion / ComfyUI euler on the list ending at 0 (NFE = steps + 1){_STOCK_NOTE}")

    def table(self, sigmas, order):
        return replace(euler_coefficients(to_zero_grid(sigmas)), to_zero=True)


def k_dpmpp_2m_coefficients(sigmas: torch.Tensor):
    """``sample_dpmpp_2m``'s table on ``[sigmas..., 0]``: DPM-Solver++(2M) (midpoint, no lower-order final steps)
    on ``sigmas``, then ``x <- D`` onto 0 (``a = 0``, ``b = 1``)."""
    c = dpmpp_coefficients(sigmas, 2, lower_order_final=False, solver_type="midpoint", coefficients="reference")
    one = sigmas.new_ones(())
    a = list(c.a) + [one * 0]
    b = list(c.b) + [one]
    pred = [list(r[:t]) for r, t in zip(c.pred, c.pred_terms)] + [[]]
    return table("data", a, b, pred, list(c.pred_terms) + [0], history=2, to_zero=True)


class KDPMPP2M(_EndsAtZero, MultistepSolver):
    name = "k_dpmpp_2m"
    orders = (2,)
    default_order = 2
    description = (f"k-diffusion / ComfyUI dpmpp_2m on the list ending at 0 (NFE = steps + 1){_STOCK_NOTE}")

    def table(self, sigmas, order):
        return k_dpmpp_2m_coefficients(sigmas)


class KHeun(_Stock, SolverSpec):
    name = "k_heun"
    orders = (2,)
    default_order = 2
    description = (f"k-diffusion / ComfyUI heun on the list ending at 0, Euler onto 0 (NFE = 2 * steps + 1)"
                   f"{_STOCK_NOTE}")

    def nfe(self, n_steps: int) -> int:
        return 2 * int(n_steps) + 1

    def steps_for_nfe(self, nfe: int) -> int:
        nfe = int(nfe)
        if nfe < 3 or nfe % 2 == 0:
            near = [3] if nfe < 3 else [nfe - 1, nfe + 1]
            raise ConfigError(f"solver 'k_heun' needs an odd NFE >= 3 (N steps plus the Euler step onto 0 cost "
                              f"2N + 1 evaluations); got nfe={nfe}. Use nfe=" + " or ".join(map(str, near)) + ".")
        return (nfe - 1) // 2

    def run(self, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True,
            eval_scales=None, noise_estimate=DEFAULT_NOISE_ESTIMATE, order=2):
        sigmas, sigmas_eval = prepare_grid(x, sigmas, sigmas_eval, check)
        ev = Evaluator(denoiser, sigmas, sigmas_eval, cond, x, eval_scales, noise_estimate)
        return heun_steps(ev, x, to_zero_grid(sigmas), callback)
