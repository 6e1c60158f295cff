"""Differentiable diffusion-ODE solvers in EDM sigma-space.

``solve(name, denoiser, x, sigmas, sigmas_eval=None, cond=None, **options)`` integrates the
probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigmas[0]`` to
``sigmas[-1]`` and returns the final state.  ``denoiser(x, sigma[B], cond) -> x0_hat``.
See :mod:`ld3_cli.solvers.base` for the grid contract.  Register a new solver by adding a
:class:`SolverSpec` subclass to :data:`SOLVERS` (docs/extending.md).
"""
from __future__ import annotations

from ..errors import ConfigError
from .base import DEFAULT_NOISE_ESTIMATE, NOISE_ESTIMATE, SolverSpec
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
          noise_estimate=DEFAULT_NOISE_ESTIMATE, **options):
    """Run solver ``name`` over ``sigmas`` (N + 1 decreasing levels) and return the state at ``sigmas[-1]``.

    ``sigmas_eval`` / ``eval_scales`` (``[N + 1]`` each, optional): LD3's decoupled evaluation, the
    network sees ``eval_scales[i] * x_i`` at ``sigmas_eval[i]`` (see :class:`~ld3_cli.solvers.base.Evaluator`).
    ``options`` are the solver's declared ones (``order``, ``variant``, ``lower_order_final``, ...; the defaults
    for those not given).  ``check=True`` checks them, the order against the steps and the grid (ConfigError
    naming the problem); ``check=False`` (a training loop whose inputs were checked once) only refuses unknown
    option names and performs no host synchronisation.
    """
    spec = get_solver(name)
    options = spec.resolve_options(options, values=check)
    if check:
        spec.validate(len(sigmas) - 1, options["order"], options)
        NOISE_ESTIMATE.check(noise_estimate, "solve")
    return spec.run(denoiser, x, sigmas, sigmas_eval, cond, callback, check, eval_scales, noise_estimate, **options)


__all__ = ["SOLVERS", "SolverSpec", "get_solver", "solve"]
