"""Baseline time discretizations.

``discretize(kind, n_steps, schedule, **options)`` returns a float64 tensor of ``n_steps + 1``
strictly decreasing sigmas from ``sigma_max`` to ``sigma_min`` (the schedule's, unless the
options ``sigma_max`` / ``sigma_min`` narrow them).  Kinds:

* ``time_uniform``: uniform in the model's native time ``t``.
* ``time_quadratic``: uniform in ``sqrt(t)`` (quadratic in t; DDIM's "quad").
* ``logsnr``: uniform in ``lambda = -log sigma``.
* ``edm``: uniform in ``sigma^(1/rho)`` (Karras et al.), ``rho`` default 7.
* ``time_edm``: the same spacing in normalised native time ``tau in (0, 1]`` (the official LD3
  teacher grid for latent models, whose code applies the rho formula to time).
* ``ays``: Align-Your-Steps published lists, log-linear interpolation for other lengths.
* ``custom``: an explicit list (``values=[...]`` or ``path=file.json|.txt``) in ``space``
  ``sigma`` (default), ``t`` or ``lambda``.

The searched baselines (``gits``, ``dmn``) live above the solvers, in :mod:`ld3_cli.search`,
which registers them here when it is imported (the stages and :mod:`ld3_cli.ld3` import it).

Register a new kind with :func:`register`, or :func:`register_lazy` for a module imported on
first use.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from .noise import NoiseSchedule, log_snr, sigma_from_log_snr

Discretizer = Callable[..., torch.Tensor]
_REGISTRY: dict[str, Discretizer] = {}
# kinds implemented in their own modules, imported on first use: kind -> module
_LAZY = {"ays": "ld3_cli.schedules.ays"}


def register(name: str):
    """Decorator: ``fn(n_steps, schedule, **options) -> sigmas`` becomes the discretization ``name``."""
    def deco(fn: Discretizer) -> Discretizer:
        _REGISTRY[name] = fn
        return fn
    return deco


def register_lazy(name: str, module: str) -> None:
    """Kind ``name`` is registered by ``module`` (with :func:`register`), imported the first time it is used."""
    _LAZY[name] = module


def available() -> list[str]:
    return sorted(set(_REGISTRY) | set(_LAZY))


def endpoints(schedule: NoiseSchedule, sigma_min=None, sigma_max=None) -> tuple[float, float]:
    lo = schedule.sigma_min if sigma_min is None else float(sigma_min)
    hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    if not 0 < lo < hi:
        raise ConfigError(f"need 0 < sigma_min < sigma_max, got {lo}, {hi}")
    return lo, hi


def check_sigmas(sigmas: torch.Tensor, n_steps: int, what: str = "schedule") -> torch.Tensor:
    """Validate a schedule: ``n_steps + 1`` finite, positive, strictly decreasing values."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() != n_steps + 1:
        raise ConfigError(f"{what} must have n_steps + 1 = {n_steps + 1} values, got {s.numel()}")
    if not bool(torch.all(torch.isfinite(s))) or not bool(torch.all(s > 0)):
        raise ConfigError(f"{what} must be finite and positive, got {s.tolist()}")
    if not bool(torch.all(s[1:] < s[:-1])):
        raise ConfigError(f"{what} must be strictly decreasing (sigma_max first), got {s.tolist()}")
    return s


def discretize(kind: str, n_steps: int, schedule: NoiseSchedule, **options) -> torch.Tensor:
    """Baseline schedule ``kind`` with ``n_steps`` steps (``n_steps + 1`` sigmas, decreasing)."""
    if n_steps < 1:
        raise ConfigError(f"a schedule needs at least 1 step, got {n_steps}")
    if kind not in _REGISTRY and kind in _LAZY:
        __import__(_LAZY[kind])
    if kind not in _REGISTRY:
        raise ConfigError(f"unknown discretization '{kind}'; choose one of {available()}")
    sig = _REGISTRY[kind](n_steps, schedule, **options)
    return check_sigmas(sig, n_steps, what=f"discretization '{kind}'")


def _native_range(schedule: NoiseSchedule, sigma_min, sigma_max):
    lo, hi = endpoints(schedule, sigma_min, sigma_max)
    t_hi, t_lo = (float(schedule.t(torch.tensor(v, dtype=torch.float64))) for v in (hi, lo))
    return t_hi, t_lo, lo, hi


def _pin_ends(sig: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    sig = sig.clone()
    sig[0], sig[-1] = hi, lo
    return sig


@register("time_uniform")
def time_uniform(n_steps, schedule, sigma_min=None, sigma_max=None, **_):
    t_hi, t_lo, lo, hi = _native_range(schedule, sigma_min, sigma_max)
    t = torch.linspace(t_hi, t_lo, n_steps + 1, dtype=torch.float64)
    return _pin_ends(schedule.sigma(t), lo, hi)


@register("time_quadratic")
def time_quadratic(n_steps, schedule, sigma_min=None, sigma_max=None, power: float = 2.0, **_):
    t_hi, t_lo, lo, hi = _native_range(schedule, sigma_min, sigma_max)
    t_hi, t_lo = max(t_hi, 0.0), max(t_lo, 0.0)  # round-off can leave t(sigma_min) at -1e-16
    u = torch.linspace(t_hi ** (1 / power), t_lo ** (1 / power), n_steps + 1, dtype=torch.float64)
    return _pin_ends(schedule.sigma(u ** power), lo, hi)


@register("logsnr")
def logsnr(n_steps, schedule, sigma_min=None, sigma_max=None, **_):
    lo, hi = endpoints(schedule, sigma_min, sigma_max)
    lam = torch.linspace(float(log_snr(hi)), float(log_snr(lo)), n_steps + 1, dtype=torch.float64)
    return _pin_ends(sigma_from_log_snr(lam), lo, hi)


@register("edm")
def edm(n_steps, schedule, sigma_min=None, sigma_max=None, rho: float = 7.0, **_):
    lo, hi = endpoints(schedule, sigma_min, sigma_max)
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    sig = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _pin_ends(sig, lo, hi)


@register("time_edm")
def time_edm(n_steps, schedule, sigma_min=None, sigma_max=None, rho: float = 7.0, **_):
    """EDM's rho spacing applied to normalised native time ``tau`` instead of sigma: the official LD3 code's
    ``skip_type=edm`` teacher grid for VP (latent) models."""
    t_hi, t_lo, lo, hi = _native_range(schedule, sigma_min, sigma_max)
    a, b = (float(schedule.normalized_time(torch.tensor(v, dtype=torch.float64))) for v in (t_hi, t_lo))
    u = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)
    tau = (a ** (1 / rho) + u * (b ** (1 / rho) - a ** (1 / rho))) ** rho
    return _pin_ends(schedule.sigma(schedule.time_from_normalized(tau)), lo, hi)


@register("custom")
def custom(n_steps, schedule, values=None, path=None, space: str = "sigma", **_):
    if values is None and path is None:
        raise ConfigError("custom discretization needs `values: [...]` or `path: file.json|.txt`")
    if values is None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"custom schedule file not found: {p}")
        text = p.read_text()
        if p.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                data = data.get(space + "s", data.get("sigmas", data.get("values")))
            values = data
        else:
            values = [float(v) for v in text.replace(",", " ").split()]
    v = torch.as_tensor(list(values), dtype=torch.float64)
    if space == "t":
        v = schedule.sigma(v)
    elif space == "lambda":
        v = sigma_from_log_snr(v)
    elif space != "sigma":
        raise ConfigError(f"custom schedule space must be sigma, t or lambda; got '{space}'")
    return v
