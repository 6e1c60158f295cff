"""Differentiable diffusion-ODE solvers in EDM sigma-space.

``solve(name, denoiser, x, sigmas, sigmas_eval=None, cond=None, **options)`` integrates the
probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigmas[0]`` to
``sigmas[-1]`` and returns the final state.  ``denoiser(x, sigma[B], cond) -> x0_hat``.
See :mod:`ld3_cli.solvers.base` for the grid contract.  Register a new solver by adding a
:class:`SolverSpec` subclass to :data:`SOLVERS` (docs/extending.md).
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import SolverSpec
from .deis import DEIS
from .dpmpp import DPMSolverPP
from .euler import Euler
from .heun import Heun
from .ipndm import IPNDM
from .stock import KDPMPP2M, KEuler, KHeun
from .unipc import UniPC

SOLVERS: dict[str, SolverSpec] = {s.name: s for s in (Euler(), Heun(), DPMSolverPP(), UniPC(), IPNDM(), DEIS(),
                                                      KEuler(), KDPMPP2M(), KHeun())}
ALIASES = {"ddim": "euler", "dpm_solver++": "dpmpp", "dpmsolver++": "dpmpp", "uni_pc": "unipc", "dpm++": "dpmpp"}


def get_solver(name: str) -> SolverSpec:
    key = ALIASES.get(name, name)
    if key not in SOLVERS:
        raise ConfigError(f"unknown solver '{name}'; choose one of {sorted(SOLVERS)}")
    return SOLVERS[key]


def solve(name, denoiser, x, sigmas, sigmas_eval=None, cond=None, callback=None, check=True, eval_scales=None,
          **options):
    """Run solver ``name`` over ``sigmas`` (N + 1 decreasing levels) and return the state at ``sigmas[-1]``.

    ``sigmas_eval`` / ``eval_scales`` (``[N + 1]`` each, optional): LD3's decoupled evaluation, the
    network sees ``eval_scales[i] * x_i`` at ``sigmas_eval[i]`` (see :class:`~ld3_cli.solvers.base.Evaluator`).
    Options are the solver's own (``order``, ``variant``, ``lower_order_final``, ``noise_estimate``, ...).
    Raises :class:`ConfigError` for an unknown solver or an impossible order / step count.
    """
    spec = get_solver(name)
    n_steps = len(sigmas) - 1
    options["order"] = spec.validate(n_steps, **{k: v for k, v in options.items() if k == "order"})
    return spec.run(denoiser, x, sigmas, sigmas_eval, cond, callback=callback, check=check, eval_scales=eval_scales,
                    **options)


__all__ = ["SOLVERS", "SolverSpec", "get_solver", "solve"]
