"""What every solver shares: the sigma-grid contract, the evaluation helper, NFE bookkeeping.

Contract of a solver run (see :func:`ld3_cli.solvers.solve`):

* ``sigmas``: 1-D, ``N + 1`` strictly decreasing positive EDM noise levels; the state starts
  at ``sigmas[0]`` and the result is the state at ``sigmas[N]``.  Update coefficients are
  functions of ``sigmas`` only, computed in float64 (float32 on devices without float64).
* ``sigmas_eval``: same length; the network is evaluated at ``(x_i, sigmas_eval[i])``
  (LD3's decoupled evaluation times).  ``None`` means ``sigmas``.
* Everything is differentiable with respect to ``x``, ``sigmas`` and ``sigmas_eval``; the
  loop performs no host synchronisation (validation happens once, before the loop).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError

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


class Evaluator:
    """Calls the denoiser at grid index ``i`` with ``sigma = sigmas_eval[i]`` broadcast to ``[B]``.

    The sigma passed to the network is float64 when the state is float64, else float32, so
    half-precision networks still receive accurate noise levels.
    """

    def __init__(self, denoiser, sigmas_eval: Tensor, cond: Any, batch: int, dtype: torch.dtype):
        sdt = torch.float64 if dtype == torch.float64 else torch.float32
        self.denoiser = denoiser
        self.sig = sigmas_eval.to(sdt)
        self.cond = cond
        self.batch = batch
        self.calls = 0

    def __call__(self, x: Tensor, i: int) -> Tensor:
        self.calls += 1
        return self.denoiser(x, self.sig[i].expand(self.batch), self.cond)


def step_order(order: int, i: int, n_steps: int, lower_order_final: bool) -> int:
    """Order used for step ``i`` (0-based) of ``n_steps``: warm up from 1, optionally end at 1."""
    o = min(order, i + 1)
    if lower_order_final:
        o = min(o, n_steps - i)
    return o


def resolve_lower_order_final(value, n_steps: int) -> bool:
    """``"auto"`` applies DPM-Solver's rule: lower the order of the final steps when N < 10."""
    if value in ("auto", None):
        return n_steps < 10
    if isinstance(value, str):
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def scale(c: Tensor, x: Tensor) -> Tensor:
    """Cast a float64 coefficient to the state's dtype (keeps autograd)."""
    return c.to(x.dtype)


class SolverSpec:
    """Registry entry for one solver.

    Subclasses define ``name``, ``orders`` (allowed), ``default_order``, ``description`` and
    ``run(denoiser, x, sigmas, sigmas_eval, cond, callback, **options)``.  ``nfe`` and
    ``steps_for_nfe`` state the cost; ``validate`` refuses impossible combinations.
    """

    name = "base"
    orders: tuple[int, ...] = (1,)
    default_order = 1
    description = ""
    options: dict = {}

    def nfe(self, n_steps: int, **options) -> int:
        return int(n_steps)

    def steps_for_nfe(self, nfe: int, **options) -> int:
        nfe = int(nfe)
        if nfe < 1:
            raise ConfigError(f"NFE must be at least 1, got {nfe}")
        return nfe

    def validate(self, n_steps: int, order: Optional[int] = None, **options) -> int:
        order = self.default_order if order is None else int(order)
        if order not in self.orders:
            raise ConfigError(f"solver '{self.name}' supports orders {list(self.orders)}, got order={order}")
        if n_steps < 1:
            raise ConfigError(f"solver '{self.name}' needs at least 1 step, got {n_steps}")
        if len(self.orders) > 1 and order > n_steps:
            raise ConfigError(f"solver '{self.name}' of order {order} needs at least {order} steps "
                              f"(NFE {self.nfe(order, **options)}); got {n_steps} steps. "
                              "Lower solver.order or raise nfe.")
        return order

    def run(self, denoiser, x, sigmas, sigmas_eval, cond, callback, **options):  # pragma: no cover
        raise NotImplementedError
