"""GITS time steps (Chen et al., ICML 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling").

GITS picks the ``N + 1`` time steps as a subset of a fine grid of ``M`` sigmas by dynamic
programming on a cost matrix measured from a few teacher trajectories:

1. Fine grid ``grid[0..M-1]`` (decreasing, ``sigma_max`` to ``sigma_min``): the EDM polynomial
   (``grid="edm"``, ``rho`` default 7) or uniform in the model's native time ``t^(1/rho)``
   (``grid="time_uniform"``, ``rho`` default 1, the Stable Diffusion setting).
2. Warm-up: ``n_warmup`` Gaussian latents run the teacher solver (default iPNDM, order 4)
   over the whole grid; every state ``x_i`` and slope ``d_i = (x_i - D(x_i, sigma_i)) / sigma_i``
   is kept (``x_{M-1}`` is the teacher's final sample).
3. Cost ``C[i, j]`` (``i < j``) of one Euler jump from the teacher state,
   ``xhat_j = x_i + (sigma_j - sigma_i) d_i``, averaged over the warm-up batch:

   * ``dev`` (default): ``dev(xhat_j) - dev(x_j)`` with ``dev(y)`` the whole-sample L2 norm of
     the part of ``x_{M-1} - y`` perpendicular to the trajectory's chord ``x_0 -> x_{M-1}``
     (signed; ``dev(x_{M-1}) = 0``);
   * ``l1`` / ``l2``: ``||xhat_j - x_j||`` per sample.

4. DP over ``K = N`` jumps: ``V[i, 1] = C[i, M-1]``, ``V[j, k] = min_{j < i < M-1} C[j, i] + coeff V[i, k-1]``,
   i.e. the path ``0 = i_0 < ... < i_K = M-1`` minimising ``sum_m coeff^m C[i_m, i_{m+1}]``;
   recovery takes the first minimiser at each stage.  The schedule is ``grid[path]``.

The pure parts are :func:`gits_cost_matrix` and :func:`gits_dp`; :func:`gits_search` runs the
warm-up and returns the path, grid and cost matrix; the registered ``gits`` kind returns sigmas.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..solvers import get_solver, solve
from ..solvers.base import coefficient_dtype
from ..schedules.discretize import edm, endpoints, register, time_quadratic
from ..schedules.noise import NoiseSchedule

log = logging.getLogger(__name__)
Tensor = torch.Tensor
METRICS = ("dev", "l1", "l2")
GRIDS = ("edm", "time_uniform")


# -- fine grid -------------------------------------------------------------------------------
def gits_grid(schedule: NoiseSchedule, n_grid: int = 61, grid: str = "edm", rho: float | None = None,
              sigma_min=None, sigma_max=None) -> Tensor:
    """The ``n_grid`` decreasing candidate sigmas (float64), endpoints exact."""
    if int(n_grid) < 2:
        raise ConfigError(f"GITS needs a fine grid of at least 2 points, got n_grid={n_grid}")
    if grid == "edm":
        return edm(int(n_grid) - 1, schedule, sigma_min, sigma_max, rho=7.0 if rho is None else float(rho))
    if grid == "time_uniform":
        return time_quadratic(int(n_grid) - 1, schedule, sigma_min, sigma_max, power=1.0 if rho is None else float(rho))
    raise ConfigError(f"unknown GITS grid '{grid}'; choose one of {list(GRIDS)}")


# -- cost matrix (pure) ----------------------------------------------------------------------
def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1) if x.dim() > 2 else x.unsqueeze(-1)


def gits_cost_matrix(states: Tensor, denoised: Tensor, grid, metric: str = "dev",
                     reduce: str = "mean", chunk_elems: int = 1 << 24) -> Tensor:
    """Cost of one Euler jump between every pair of grid points, from teacher trajectories.

    Args:
        states: ``[M, B, ...]`` teacher states ``x_0 .. x_{M-1}`` at ``grid[0..M-1]``.
        denoised: ``[M-1, B, ...]`` (or ``[M, B, ...]``; the last is unused) ``D(x_i, grid[i])``.
        grid: ``M`` decreasing sigmas.
        metric: ``dev`` | ``l1`` | ``l2`` (see the module docstring).
        reduce: ``mean`` over the batch (default) or ``sum`` (to accumulate over batches).
    Returns:
        ``[M, M]`` float64 CPU tensor, ``C[i, j]`` for ``i < j``; zero on and below the diagonal.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown GITS metric '{metric}'; choose one of {list(METRICS)}")
    m, b = states.shape[0], states.shape[1]
    if denoised.shape[0] < m - 1 or denoised.shape[1:] != states.shape[1:]:
        raise ValueError(f"denoised must be [M-1, B, ...] for states {tuple(states.shape)}, "
                         f"got {tuple(denoised.shape)}")
    dt = coefficient_dtype(states.device)
    x = _flat(states).to(dt)
    den = _flat(denoised[: m - 1]).to(dt)
    sig = torch.as_tensor(grid, dtype=dt, device=states.device).flatten()
    if sig.numel() != m:
        raise ValueError(f"grid has {sig.numel()} points but states has {m}")
    slopes = (x[: m - 1] - den) / sig[: m - 1, None, None]
    cost = torch.zeros(m, m, dtype=torch.float64)

    if metric == "dev":
        chord = x[-1] - x[0]
        unit = chord / chord.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dt).tiny)

        def dev(y):  # y: [..., B, D] -> [..., B]
            v = x[-1] - y
            return (v - (v * unit).sum(-1, keepdim=True) * unit).norm(dim=-1)

    d = x.shape[-1]
    step = max(1, int(chunk_elems) // max(1, b * d))
    if metric == "dev":
        dev_teacher = torch.cat([dev(x[j0:j0 + step]) for j0 in range(0, m, step)])
        dev_teacher[-1] = 0.0
    for i in range(m - 1):
        for j0 in range(i + 1, m, step):
            j1 = min(m, j0 + step)
            dsig = (sig[j0:j1] - sig[i])[:, None, None]
            xhat = x[i][None] + dsig * slopes[i][None]  # [J, B, D]
            if metric == "dev":
                per = dev(xhat) - dev_teacher[j0:j1]
            else:
                per = (xhat - x[j0:j1]).norm(p=1 if metric == "l1" else 2, dim=-1)
            vals = per.sum(-1) if reduce == "sum" else per.mean(-1)
            cost[i, j0:j1] = vals.to(torch.float64).cpu()
    return cost


# -- dynamic programme (pure) ----------------------------------------------------------------
def gits_dp(cost, n_steps: int, coeff: float = 1.15) -> list[int]:
    """Indices ``0 = i_0 < ... < i_K = M-1`` (``K = n_steps``) minimising ``sum_m coeff^m C[i_m, i_{m+1}]``.

    ``cost`` is ``[M, M]`` (only ``i < j`` is read).  Ties go to the smallest index at each stage.
    """
    c = np.asarray(cost.detach().cpu() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    m = c.shape[0]
    k_steps = int(n_steps)
    if c.shape != (m, m):
        raise ValueError(f"cost must be square, got {c.shape}")
    if k_steps < 1 or k_steps > m - 1:
        raise ConfigError(f"GITS cannot pick {k_steps} steps from a grid of {m} points; need 1 <= N <= {m - 1} "
                          "(raise n_grid)")
    # value[k][j]: best cost of k jumps from j to M-1; choice[k][j]: the next index on that path
    value = np.full((k_steps + 1, m), np.inf)
    choice = np.full((k_steps + 1, m), -1, dtype=np.int64)
    value[1, : m - 1] = c[: m - 1, m - 1]
    choice[1, : m - 1] = m - 1
    for k in range(2, k_steps + 1):
        for j in range(m - 1):
            cand = c[j, j + 1: m - 1] + coeff * value[k - 1, j + 1: m - 1]
            if cand.size == 0 or not np.isfinite(cand).any():
                continue
            a = int(np.argmin(cand))
            value[k, j] = cand[a]
            choice[k, j] = j + 1 + a
    path, w = [0], 0
    for k in range(k_steps, 0, -1):
        w = int(choice[k, w])
        path.append(w)
    return path


def path_cost(cost, path: Sequence[int], coeff: float = 1.15) -> float:
    """``sum_m coeff^m C[path_m, path_{m+1}]`` (the DP objective of a path)."""
    c = np.asarray(cost.detach().cpu() if isinstance(cost, Tensor) else cost, dtype=np.float64)
    return float(sum(coeff ** m * c[a, b] for m, (a, b) in enumerate(itertools.pairwise(path))))


# -- warm-up and search ----------------------------------------------------------------------
def warmup_noise(n: int, shape: Sequence[int], seed: int = 0) -> Tensor:
    """``[n, *shape]`` float32 unit Gaussians; sample ``k`` comes from its own generator seeded ``seed + k``."""
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) + k))
                        for k in range(int(n))])


def _slice_cond(cond: Any, a: int, b: int, n: int, device) -> Any:
    """Rows ``a:b`` of per-sample conditions (tensors, lists, dicts of them); anything else is shared."""
    if cond is None:
        return None
    if isinstance(cond, Tensor):
        return (cond[a:b] if cond.dim() > 0 and cond.shape[0] == n else cond).to(device)
    if isinstance(cond, (list, tuple)) and len(cond) == n:
        return type(cond)(cond[a:b])
    if isinstance(cond, dict):
        return {k: _slice_cond(v, a, b, n, device) for k, v in cond.items()}
    return cond


class _Trajectory:
    """Solver callback keeping the teacher's state ``x_i`` and ``D(x_i)`` at every grid point."""

    def __init__(self):
        self.states: list[Tensor] = []
        self.denoised: list[Tensor] = []

    def __call__(self, i: int, x_i: Tensor, denoised_i: Tensor) -> None:
        self.states.append(x_i.detach())
        self.denoised.append(denoised_i.detach())


@dataclass
class GITSResult:
    """A GITS search: the chosen ``sigmas`` (= ``grid[path]``), the fine grid and the mean cost matrix."""

    sigmas: Tensor
    path: list[int]
    grid: Tensor
    cost: Tensor
    n_warmup: int
    teacher_nfe: int


@dataclass(frozen=True)
class GITSSettings:
    """How GITS searches; every field has the paper's default (see the module docstring).

    ``n_warmup`` trajectories from per-sample seeds ``seed + k`` (used when no noise is given), run in
    batches of ``batch_size`` by ``teacher_solver`` (``teacher_order`` / ``teacher_options``) over the
    fine grid (``n_grid`` points of ``grid`` with ``rho``, between ``sigma_min`` and ``sigma_max``);
    ``metric`` and ``coeff`` define the cost and the DP objective; ``shape``, ``device`` and ``dtype``
    default to the denoiser's.
    """

    n_warmup: int = 256
    seed: int = 0
    batch_size: int = 64
    n_grid: int = 61
    grid: str = "edm"
    rho: float | None = None
    teacher_solver: str = "ipndm"
    teacher_order: int | None = None
    teacher_options: dict | None = None
    metric: str = "dev"
    coeff: float = 1.15
    sigma_min: float | None = None
    sigma_max: float | None = None
    shape: Sequence[int] | None = None
    device: Any = None
    dtype: Any = None

    @classmethod
    def of(cls, settings: GITSSettings | None = None, **options) -> GITSSettings:
        """``settings`` (default: the defaults) with ``options`` replaced; an unknown option is refused by name."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown GITS option(s) {unknown}; choose from {[f.name for f in fields(cls)]}")
        return replace(settings if settings is not None else cls(), **options)


def gits_search(n_steps: int, schedule: NoiseSchedule, denoiser, noise: Tensor | None = None, cond: Any = None,
                settings: GITSSettings | None = None, **options) -> GITSResult:
    """Run the GITS warm-up and dynamic programme with ``settings`` (:class:`GITSSettings`, or its fields
    as keyword ``options``, which override ``settings``).

    ``noise``: ``[n, *shape]`` unit Gaussians (scaled here by ``sigma_max``); drawn with
    per-sample seeds ``seed + k`` when absent (``shape`` defaults to ``denoiser.shape``).
    ``n_warmup`` is ignored when ``noise`` is given.  ``cond``: conditions for those samples
    (batched along dim 0); drawn from the seeds with ``denoiser.draw_conditions`` when both
    ``noise`` and ``cond`` are absent.  Costs ``n_warmup * (n_grid - 1)`` teacher evaluations
    for one-call-per-step teachers (``teacher_nfe`` in the result).
    """
    st = GITSSettings.of(settings, **options)
    if denoiser is None:
        raise ConfigError("GITS needs a denoiser for its teacher warm-up: use it from a stage that loads the model, "
                          "or call discretize('gits', n, schedule, denoiser=model, ...)")
    if st.metric not in METRICS:
        raise ConfigError(f"unknown GITS metric '{st.metric}'; choose one of {list(METRICS)}")
    lo, hi = endpoints(schedule, st.sigma_min, st.sigma_max)
    sig_grid = gits_grid(schedule, st.n_grid, st.grid, st.rho, lo, hi)
    m = sig_grid.numel()
    if not 1 <= int(n_steps) <= m - 1:
        raise ConfigError(f"GITS cannot pick {n_steps} steps from a grid of {m} points; raise n_grid above {n_steps}")
    device = torch.device(st.device) if st.device is not None else getattr(denoiser, "device", torch.device("cpu"))
    dtype = st.dtype or getattr(denoiser, "dtype", torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if noise is None:
        noise, cond = _warmup_inputs(st, denoiser, cond)
    n = noise.shape[0]
    opts = dict(st.teacher_options or {})
    if st.teacher_order is not None:
        opts["order"] = int(st.teacher_order)
    bs = max(1, int(st.batch_size))
    total = torch.zeros(m, m, dtype=torch.float64)
    for a in range(0, n, bs):
        b = min(n, a + bs)
        x0 = noise[a:b].to(device=device, dtype=dtype) * hi
        traj = _Trajectory()
        with torch.no_grad():
            final = solve(st.teacher_solver, denoiser, x0, sig_grid, cond=_slice_cond(cond, a, b, n, device),
                          callback=traj, **opts)
        traj.states.append(final.detach())
        total += gits_cost_matrix(torch.stack(traj.states), torch.stack(traj.denoised), sig_grid, st.metric,
                                  reduce="sum")
        log.info("GITS warm-up: %d / %d trajectories", b, n)
    cost = total / n
    path = gits_dp(cost, int(n_steps), st.coeff)
    nfe = get_solver(st.teacher_solver).evaluations(m - 1, opts) * n
    return GITSResult(sig_grid[path].clone(), path, sig_grid, cost, n, nfe)


def _warmup_inputs(st: GITSSettings, denoiser, cond: Any) -> tuple[Tensor, Any]:
    """``(noise, cond)`` of the ``st.n_warmup`` warm-up trajectories drawn from seeds ``st.seed + k``
    (``cond`` drawn with ``denoiser.draw_conditions`` when not given)."""
    if int(st.n_warmup) < 1:
        raise ConfigError(f"GITS needs n_warmup >= 1 trajectories, got {st.n_warmup}")
    shape = st.shape if st.shape is not None else getattr(denoiser, "shape", None)
    if shape is None:
        raise ConfigError("GITS cannot tell the state shape: pass shape=[C, H, W] or noise=...")
    seeds = torch.arange(int(st.seed), int(st.seed) + int(st.n_warmup))
    noise = warmup_noise(int(st.n_warmup), shape, st.seed)
    if cond is None and hasattr(denoiser, "draw_conditions"):
        cond = denoiser.draw_conditions(seeds)
    return noise, cond


@register("gits")
def gits(n_steps, schedule, denoiser=None, noise=None, cond=None, settings: GITSSettings | None = None, **options):
    """GITS schedule: ``n_steps + 1`` decreasing sigmas chosen from the fine grid (endpoints exact).

    ``settings`` / ``options``: the search's :class:`GITSSettings` (an unknown option is refused by name).
    """
    return gits_search(n_steps, schedule, denoiser, noise, cond, settings, **options).sigmas
