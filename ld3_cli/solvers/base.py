"""What every solver shares: the sigma-grid contract, the evaluation helper, NFE bookkeeping.

Contract of a solver run (see :func:`ld3_cli.solvers.solve`):

* ``sigmas``: 1-D, ``N + 1`` strictly decreasing positive EDM noise levels; the state starts
  at ``sigmas[0]`` and the result is the state at ``sigmas[N]``.  Update coefficients are
  functions of ``sigmas`` only, computed in float64 (float32 on devices without float64).
* ``sigmas_eval``: same length; the network is evaluated at ``(c_i x_i, sigmas_eval[i])``
  (LD3's decoupled evaluation times) with optional state scales ``c_i`` (``eval_scales``, default
  1; see :class:`Evaluator`).  ``None`` means ``sigmas``.
* ``analytic_first`` (the multistep solvers' option of that name): grid point 0 is not evaluated; its noise
  estimate is ``x_0 / sqrt(1 + sigmas[0]^2)`` (see :class:`Evaluator`), so ``N`` steps cost ``N - 1`` NFE.
* Everything is differentiable with respect to ``x``, ``sigmas`` and ``sigmas_eval``; the
  loop performs no host synchronisation (validation happens once, before the loop).
"""
from __future__ import annotations

from functools import cached_property
from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import ConfigError
from ..utils.option_schema import FLAG, Option, by_name, check_options, one_of

Tensor = torch.Tensor
# callback(i, x_i, denoised_i): called once per grid point i < N with the state at sigmas[i]
# and the denoiser output used for the step that leaves it.
Callback = Callable[[int, Tensor, Tensor], None]


def coefficient_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever the device supports it."""
    return torch.float32 if device.type == "mps" else torch.float64


def prepare_grid(x: Tensor, sigmas: Tensor, sigmas_eval: Optional[Tensor], check: bool = True):
    """Move both grids to ``x``'s device in the coefficient dtype and validate them once."""
    if not isinstance(sigmas, Tensor):
        sigmas = torch.as_tensor(sigmas)
    dt = coefficient_dtype(x.device)
    sigmas = sigmas.to(device=x.device, dtype=dt)
    if sigmas_eval is None:
        sigmas_eval = sigmas
    else:
        if not isinstance(sigmas_eval, Tensor):
            sigmas_eval = torch.as_tensor(sigmas_eval)
        sigmas_eval = sigmas_eval.to(device=x.device, dtype=dt)
    if check:
        if sigmas.dim() != 1 or sigmas.numel() < 2:
            raise ConfigError(f"sigmas must be a 1-D list of N + 1 >= 2 noise levels, got shape {tuple(sigmas.shape)}")
        if sigmas_eval.shape != sigmas.shape:
            raise ConfigError(f"sigmas_eval must have the shape of sigmas {tuple(sigmas.shape)}, "
                              f"got {tuple(sigmas_eval.shape)}")
        s = sigmas.detach()
        if not bool(torch.all(s > 0)) or not bool(torch.all(s[1:] < s[:-1])):
            raise ConfigError("sigmas must be strictly decreasing and positive "
                              "(sigma_max first, ending at sigma_min > 0); "
                              f"got {[round(v, 6) for v in s.tolist()]}")
        if not bool(torch.all(sigmas_eval.detach() > 0)):
            raise ConfigError("sigmas_eval must be positive")
    return sigmas, sigmas_eval


NOISE_ESTIMATES = ("eval", "step")
DEFAULT_NOISE_ESTIMATE = "step"  # see Evaluator; docs/reproduction.md has the measurements
# declared once: solve() checks its argument with it, and the trainer's options hold it (train.noise_estimate)
NOISE_ESTIMATE = Option("noise_estimate", DEFAULT_NOISE_ESTIMATE, one_of(NOISE_ESTIMATES),
                        "Noise estimate of euler, heun, ipndm and deis at a decoupled evaluation: step ((x - D) over "
                        "the step's sigma) or eval (the network's own, as the paper's code).")


def prepare_scales(x: Tensor, eval_scales: Optional[Tensor]) -> Optional[Tensor]:
    """``eval_scales`` ``[N + 1]`` on ``x``'s device in the coefficient dtype (``None`` stays ``None``)."""
    if eval_scales is None:
        return None
    if not isinstance(eval_scales, Tensor):
        eval_scales = torch.as_tensor(eval_scales)
    return eval_scales.to(device=x.device, dtype=coefficient_dtype(x.device))


class Evaluator:
    """The network evaluations of a solver run: grid point ``i`` is evaluated at ``sigmas_eval[i]``.

    Decoupled evaluation (LD3): with per-point state scales ``c_i`` (``eval_scales``, default 1)
    the data estimate at grid point ``i`` is

        D_i   = D(c_i x_i, sigmas_eval[i])

    and the noise estimate (slope of ``dx/dsigma``) used by the noise-form solvers (Euler, Heun,
    iPNDM, DEIS) is, for ``noise_estimate="step"`` (the default), ``(x_i - D_i) / sigmas[i]``, or, for
    ``"eval"`` (the official LD3 code), the noise the network sees at its own evaluation point,
    ``eps_i = (c_i x_i - D_i) / sigmas_eval[i]``.  Both equal ``(x_i - D(x_i, sigma_i)) / sigma_i`` when
    ``sigmas_eval == sigmas`` and ``c == 1``.  For a VP model, ``c_i = alpha(sigma_i) /
    alpha(sigmas_eval[i])`` makes the network see the state of step time ``i`` with the noise
    label of the evaluation time, which is what the official LD3 code computes (docs/concepts.md).

    With ``analytic_first`` (the analytic first step of AMED / DyWeight) grid point 0 costs no evaluation:
    at ``sigma_0 = sigmas[0]`` the state is almost pure noise, ``x_0 = x0 + sigma_0 n`` with ``sigma_0`` far above
    the data's scale, so its noise estimate is taken as ``eps_0 = x_0 / sqrt(1 + sigma_0^2)`` (``n`` up to
    ``O(1 / sigma_0)`` for data of unit-order variance) and ``D_0 = x_0 - sigma_0 eps_0``; ``sigmas_eval[0]`` and
    ``eval_scales[0]`` are then unused.

    The sigma passed to the network is float64 when the state is float64, else float32, so
    half-precision networks still receive accurate noise levels.
    """

    def __init__(self, denoiser, sigmas: Tensor, sigmas_eval: Tensor, cond: Any, x: Tensor,
                 eval_scales: Optional[Tensor] = None, noise_estimate: str = DEFAULT_NOISE_ESTIMATE,
                 analytic_first: bool = False):
        sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.denoiser = denoiser
        self.sigmas = sigmas
        self.sigmas_eval = sigmas_eval
        self.sig = sigmas_eval.to(sdt)
        self.scales = prepare_scales(x, eval_scales)
        self.at_eval = noise_estimate == "eval"
        self.cond = cond
        self.batch = x.shape[0]
        self.analytic_first = bool(analytic_first)
        self.calls = 0

    def _input(self, x: Tensor, i: int) -> Tensor:
        return x if self.scales is None else as_state_dtype(self.scales[i], x) * x

    def _analytic(self, i: int) -> bool:
        return self.analytic_first and i == 0

    def __call__(self, x: Tensor, i: int) -> Tensor:
        """``D_i = D(c_i x, sigmas_eval[i])`` (with ``analytic_first``, at grid point 0: ``x - sigma_0 eps_0``)."""
        if self._analytic(i):
            return x - as_state_dtype(self.sigmas[0], x) * analytic_noise(x, self.sigmas[0])
        self.calls += 1
        return self.denoiser(self._input(x, i), self.sig[i].expand(self.batch), self.cond)

    def eps(self, x: Tensor, den: Tensor, i: int) -> Tensor:
        """The noise estimate at grid point ``i`` from the state ``x`` and its ``den = self(x, i)``."""
        if self._analytic(i):
            return analytic_noise(x, self.sigmas[0])
        if self.at_eval:
            return (self._input(x, i) - den) / as_state_dtype(self.sigmas_eval[i], x)
        return (x - den) / as_state_dtype(self.sigmas[i], x)


def analytic_noise(x: Tensor, sigma: Tensor) -> Tensor:
    """The analytic first step's noise estimate ``x / sqrt(1 + sigma^2)`` (``sigma`` a float64 0-d tensor)."""
    return x * as_state_dtype(torch.rsqrt(1 + sigma * sigma), x)


def step_order(order: int, i: int, n_steps: int, lower_order_final: bool) -> int:
    """Order used for step ``i`` (0-based) of ``n_steps``: warm up from 1, optionally end at 1."""
    o = min(order, i + 1)
    if lower_order_final:
        o = min(o, n_steps - i)
    return o


def resolve_lower_order_final(value, n_steps: int) -> bool:
    """``True`` (the default, as the official LD3 samplers): always lower the order of the final steps;
    ``"auto"`` applies DPM-Solver's rule: only when N < 10."""
    return n_steps < 10 if value == "auto" else bool(value)


def as_state_dtype(c: Tensor, x: Tensor) -> Tensor:
    """A float64 coefficient cast to the state's dtype (keeps autograd)."""
    return c.to(x.dtype)


# options more than one solver takes: declared once here
ANALYTIC_FIRST = Option("analytic_first", False, FLAG,
                        "Analytic first step (AMED / DyWeight): the first step uses the noise estimate "
                        "x / sqrt(1 + sigma_max^2) instead of a network evaluation, so NFE N runs N + 1 steps.")
LOWER_ORDER_FINAL = Option("lower_order_final", True, one_of((True, False, "auto")),
                           "Lower the order of the final steps, min(order, N - i): true (the official LD3 samplers), "
                           "auto (only when steps < 10, DPM-Solver's rule) or false.")


def analytic_first(options: Optional[Mapping]) -> bool:
    """Whether a run with solver ``options`` takes its first step analytically (the option ``analytic_first``)."""
    return bool((options or {}).get(ANALYTIC_FIRST.name, False))


class SolverSpec:
    """Registry entry for one solver.

    Subclasses define ``name``, ``orders`` (allowed), ``default_order``, ``description``, their own
    ``options`` (:class:`~ld3_cli.utils.option_schema.Option` declarations besides ``order``) and
    ``run(denoiser, x, sigmas, sigmas_eval, cond, callback, check, eval_scales, noise_estimate, **options)``
    (``options``: every declared option, resolved by :func:`ld3_cli.solvers.solve`).  ``nfe`` and
    ``steps_for_nfe`` state the cost of the method (``evaluations`` / ``steps_for``: of a run, with its options);
    ``validate`` refuses impossible order / step combinations.
    """

    name = "base"
    orders: tuple[int, ...] = (1,)
    default_order = 1
    description = ""
    options: tuple[Option, ...] = ()
    # options of the run rather than of the update rule (the linear multistep solvers: analytic_first)
    run_options: tuple[Option, ...] = ()
    # True for a stock sampler that evaluates the network on its own list: no decoupled times, no state scales
    evaluates_on_grid = False
    # True when the run ends with one more step from the grid's last sigma onto 0 (k-diffusion's lists)
    ends_at_zero = False

    @cached_property
    def declared(self) -> dict[str, Option]:
        """Every option of this solver by name: ``order`` first, then its own, then the run's."""
        order = Option("order", self.default_order, one_of(self.orders), f"Order, one of {list(self.orders)}.")
        return {"order": order, **by_name(self.options), **by_name(self.run_options)}

    @cached_property
    def defaults(self) -> dict:
        return {name: o.default for name, o in self.declared.items()}

    def resolve_options(self, options: Mapping, prefix: str = "solver", values: bool = True,
                        fill_defaults: bool = True) -> dict:
        """Every declared option (defaults for those not in ``options``, unless ``fill_defaults=False``); unknown
        names refused, values checked unless ``values=False`` (they were checked where they entered)."""
        return check_options(self.declared, options, prefix, fill_defaults, values, owner=f"solver '{self.name}'")

    def nfe(self, n_steps: int) -> int:
        """Network evaluations of ``n_steps`` steps of the solver's own method (:meth:`evaluations`: of a run)."""
        return int(n_steps)

    def steps_for_nfe(self, nfe: int) -> int:
        """Steps that ``nfe`` evaluations pay for in the solver's own method (:meth:`steps_for`: in a run)."""
        nfe = int(nfe)
        if nfe < 1:
            raise ConfigError(f"NFE must be at least 1, got {nfe}")
        return nfe

    def evaluations(self, n_steps: int, options: Optional[Mapping] = None) -> int:
        """Network evaluations of ``n_steps`` steps run with ``options`` (one fewer with ``analytic_first``)."""
        return self.nfe(n_steps) - int(analytic_first(options))

    def steps_for(self, nfe: int, options: Optional[Mapping] = None) -> int:
        """Steps that ``nfe`` evaluations pay for in a run with ``options`` (one more with ``analytic_first``)."""
        return self.steps_for_nfe(nfe) + int(analytic_first(options))

    def validate(self, n_steps: int, order: Optional[int] = None, options: Optional[Mapping] = None) -> int:
        """``order`` (default: ``default_order``) if this solver can run it on ``n_steps`` steps, else ConfigError
        (``options``: the run's, for the NFE the message names)."""
        order = self.default_order if order is None else int(order)
        if order not in self.orders:
            raise ConfigError(f"solver '{self.name}' supports orders {list(self.orders)}, got order={order}")
        if n_steps < 1:
            raise ConfigError(f"solver '{self.name}' needs at least 1 step, got {n_steps}")
        if len(self.orders) > 1 and order > n_steps:
            raise ConfigError(f"solver '{self.name}' of order {order} needs at least {order} steps "
                              f"(NFE {self.evaluations(order, options)}); got {n_steps} steps. Lower solver.order "
                              "or raise nfe.")
        return order

    def learns_coefficients(self, options: Mapping) -> bool:
        """Whether this solver, with ``options`` (resolved), has multistep weights that can be learned: it combines
        earlier network outputs (order >= 2) or has a corrector.  Decided from the declaration, nothing is run."""
        return False

    def check_learnable(self, options: Mapping) -> None:
        """ConfigError naming the fix when ``train.learn`` asks for coefficients this solver does not have."""
        from . import SOLVERS

        if self.evaluates_on_grid:
            raise ConfigError(f"solver '{self.name}' is a stock sampler: its coefficients are k-diffusion's and "
                              "cannot be learned; use train.learn=[steps] with it, or a learned solver with "
                              "solver=dpmpp or unipc")
        if not self.learns_coefficients(options):
            able = [s.name for s in SOLVERS.values()
                    if any(s.learns_coefficients({**s.defaults, "order": k}) for k in s.orders)]
            raise ConfigError(f"solver '{self.name}' of order {options.get('order')} combines no earlier network "
                              f"outputs: it has no coefficients to learn; use {', '.join(able)} of order >= 2 "
                              "(train.learn=[steps,offsets] learns this solver's schedule)")

    def run(self, denoiser, x, sigmas, sigmas_eval, cond, callback, check, eval_scales, noise_estimate,
            **options):  # pragma: no cover
        raise NotImplementedError

    def coefficients(self, sigmas, **options):
        """The solver's :class:`~ld3_cli.solvers.multistep.MultistepCoefficients` on ``sigmas`` (float64,
        differentiable); solvers that are not linear multistep methods (Heun) have none."""
        raise ConfigError(f"solver '{self.name}' is not a linear multistep method: it has no coefficient table")
