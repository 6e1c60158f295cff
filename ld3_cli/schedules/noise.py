"""Noise schedules: the map between a model's native time ``t`` and EDM ``sigma``.

Conventions (all kinds):

* ``x_t = alpha(t) * (x0 + sigma(t) * n)``: the canonical sigma-space state is ``x = x_t / alpha(t)``.
* Native time grows with noise: ``t_max`` is the noisy end (``sigma_max``), ``t_min`` the clean end.
* All maps take and return tensors (any shape), computed in float64 and differentiable, so
  a schedule learned in native time (``train.param=time``) back-propagates through them.
* ``lambda = -log(sigma)`` is the log-SNR used by the exponential-integrator solvers
  (for VP models this equals ``log(alpha_t / sigma_t)``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError

Tensor = torch.Tensor


def _t64(x) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def log_snr(sigma) -> Tensor:
    """``lambda = -log(sigma)`` in float64."""
    return -torch.log(_t64(sigma))


def sigma_from_log_snr(lam) -> Tensor:
    """Inverse of :func:`log_snr`."""
    return torch.exp(-_t64(lam))


class NoiseSchedule:
    """Base class; subclasses implement ``sigma``, ``t`` and ``alpha``.

    Attributes:
        kind: short name used in configs and manifests.
        t_min, t_max: native time range (clean end, noisy end).
        latent_like: True where baselines should be defined in native time (VP models),
            False where log-SNR is natural (EDM pixel models); used for defaults only.
    """

    kind: str = "base"
    t_min: float
    t_max: float

    # -- maps ------------------------------------------------------------------------------
    def sigma(self, t) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t(self, sigma) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, t) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- derived ---------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return float(self.sigma(self.t_min))

    @property
    def sigma_max(self) -> float:
        return float(self.sigma(self.t_max))

    @property
    def time_unit(self) -> float:
        """Native-time length of one unit of "normalised time" ``t in (0, 1]`` (the official LD3 code's time):
        the number of training steps for discrete-time models, 1 for continuous ones."""
        return 1.0

    def normalized_time(self, t) -> Tensor:
        """Native ``t`` -> the official LD3 code's time ``tau in (0, 1]`` (``t / time_unit``; see VPDiscrete)."""
        return _t64(t) / self.time_unit

    def time_from_normalized(self, tau) -> Tensor:
        """Inverse of :meth:`normalized_time`."""
        return _t64(tau) * self.time_unit

    def alpha_at(self, sigma) -> Tensor:
        """``alpha`` at the native time of noise level ``sigma`` (``x_t = alpha * x``); differentiable."""
        return self.alpha(self.t(sigma))

    def lam(self, t) -> Tensor:
        """log-SNR at native time ``t``."""
        return log_snr(self.sigma(t))

    def t_from_lam(self, lam) -> Tensor:
        return self.t(sigma_from_log_snr(lam))

    def to_dict(self) -> dict:
        """Plain-data description, stored in manifests and exports."""
        return {"kind": self.kind, "t_min": float(self.t_min), "t_max": float(self.t_max),
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def __repr__(self) -> str:
        d = self.to_dict()
        return (f"{type(self).__name__}(sigma {d['sigma_min']:.4g}..{d['sigma_max']:.4g}, "
                f"t {d['t_min']:.4g}..{d['t_max']:.4g})")


class EDM(NoiseSchedule):
    """EDM (Karras et al. 2022): ``sigma = t``, ``alpha = 1``."""

    kind = "edm"
    latent_like = False

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"EDM schedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.t_min, self.t_max = float(sigma_min), float(sigma_max)

    def sigma(self, t) -> Tensor:
        return _t64(t)

    def t(self, sigma) -> Tensor:
        return _t64(sigma)

    def alpha(self, t) -> Tensor:
        return torch.ones_like(_t64(t))


class _VP(NoiseSchedule):
    """Shared VP relations: ``alpha_t^2 + s_t^2 = 1`` so ``alpha = 1 / sqrt(1 + sigma^2)``."""

    latent_like = True

    def alpha(self, t) -> Tensor:
        s = self.sigma(t)
        return torch.rsqrt(1.0 + s * s)

    def alpha_at(self, sigma) -> Tensor:
        s = _t64(sigma)
        return torch.rsqrt(1.0 + s * s)


class VPLinear(_VP):
    """Continuous VP-SDE with linear beta (Song et al. 2021): ``beta(t) = b0 + t (b1 - b0)``, t in [eps, 1].

    ``log alpha_t = -(b1 - b0) t^2 / 4 - b0 t / 2`` and ``sigma = sqrt(alpha_t^-2 - 1)``.
    """

    kind = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        self.b0, self.b1 = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), float(t_max)

    def _neg2_log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * (self.b1 - self.b0) * t * t + self.b0 * t

    def sigma(self, t) -> Tensor:
        return torch.sqrt(torch.expm1(self._neg2_log_alpha(_t64(t))))

    def t(self, sigma) -> Tensor:
        # solve 0.5 (b1-b0) t^2 + b0 t - log(1 + sigma^2) = 0 for t >= 0
        c = torch.log1p(_t64(sigma) ** 2)
        a = 0.5 * (self.b1 - self.b0)
        return 2.0 * c / (self.b0 + torch.sqrt(self.b0 ** 2 + 4.0 * a * c))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "beta_min": self.b0, "beta_max": self.b1}


class VPCosine(_VP):
    """Cosine schedule (Nichol & Dhariwal 2021): ``alpha_bar(t) = cos^2((t+s)/(1+s) pi/2) / cos^2(s/(1+s) pi/2)``.

    ``t_max`` defaults to 0.9946 (where sigma stays finite), as in DPM-Solver.
    """

    kind = "vp_cosine"

    def __init__(self, s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946):
        self.s = float(s)
        self.t_min, self.t_max = float(t_min), float(t_max)
        self._c0 = math.cos(self.s / (1 + self.s) * math.pi / 2)

    def sigma(self, t) -> Tensor:
        sqrt_ab = torch.cos((_t64(t) + self.s) / (1 + self.s) * math.pi / 2) / self._c0
        return torch.sqrt(1.0 - sqrt_ab ** 2) / sqrt_ab

    def t(self, sigma) -> Tensor:
        sqrt_ab = torch.rsqrt(1.0 + _t64(sigma) ** 2)
        return torch.arccos(sqrt_ab * self._c0) * 2 * (1 + self.s) / math.pi - self.s

    def to_dict(self) -> dict:
        return {**super().to_dict(), "s": self.s}


# -- discrete-time beta schedules (the names diffusers' scheduler configs use) --------------------
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def cosine_betas(n: int, max_beta: float = 0.999) -> Tensor:
    """Betas of the squared-cosine alpha-bar (Nichol & Dhariwal 2021), each capped at ``max_beta``."""
    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=torch.float64)


def make_betas(kind: str, n: int, beta_start: float = 1e-4, beta_end: float = 2e-2) -> Tensor:
    """float64 ``betas[0..n-1]`` of a named schedule (one of :data:`BETA_SCHEDULES`).

    ``linear``: linear from ``beta_start`` to ``beta_end``; ``scaled_linear``: linear in
    ``sqrt(beta)`` (LDM / Stable Diffusion); ``squaredcos_cap_v2``: :func:`cosine_betas` (the
    endpoints are not used).
    """
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        return cosine_betas(n)
    raise ConfigError(f"unknown beta schedule '{kind}'; choose one of {', '.join(BETA_SCHEDULES)}")


def zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """``alphas_cumprod`` rescaled to zero terminal SNR (Lin et al. 2024), as diffusers' ``rescale_betas_zero_snr``.

    ``sqrt(alpha_bar)`` is shifted and scaled so that the last value is 0 and the first unchanged;
    the last is then set to ``2^-24`` as diffusers' samplers do, to keep sigma finite.
    """
    r = alphas_cumprod.sqrt()
    r0, r_last = r[0].clone(), r[-1].clone()
    ac = ((r - r_last) * (r0 / (r0 - r_last))) ** 2
    ac[-1] = 2.0 ** -24
    return ac


class VPDiscrete(_VP):
    """Discrete-time VP (DDPM / LDM / Stable Diffusion): ``alphas_cumprod[i]`` for integer steps i.

    Native time is the (possibly fractional) training-step index.  Between integer steps,
    ``log sigma`` is interpolated linearly; ``t_min`` is ``first_step`` (some models, e.g.
    the MNIST DDPM of the test suite, are only trained on steps 1..T) and ``t_max`` the
    last step.  Build from betas with :meth:`from_betas`.
    """

    kind = "vp_discrete"

    def __init__(self, alphas_cumprod: Sequence[float] | Tensor, first_step: int = 0):
        ac = _t64(torch.as_tensor(alphas_cumprod)).flatten()
        if ac.numel() < 2 or not bool(torch.all(ac[1:] < ac[:-1])):
            raise ConfigError("VPDiscrete needs a strictly decreasing alphas_cumprod with at least 2 entries")
        self.alphas_cumprod = ac
        self.log_sigmas = 0.5 * (torch.log1p(-ac) - torch.log(ac))
        self.first_step = int(first_step)
        self.t_min, self.t_max = float(first_step), float(ac.numel() - 1)

    @classmethod
    def from_betas(cls, betas, first_step: int = 0) -> "VPDiscrete":
        b = _t64(torch.as_tensor(betas))
        return cls(torch.cumprod(1.0 - b, dim=0), first_step=first_step)

    @classmethod
    def linear(cls, n_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2, first_step: int = 0):
        return cls.from_betas(make_betas("linear", n_steps, beta_start, beta_end), first_step)

    @classmethod
    def scaled_linear(cls, n_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      first_step: int = 0):
        """Stable Diffusion / LDM betas: linear in sqrt(beta)."""
        return cls.from_betas(make_betas("scaled_linear", n_steps, beta_start, beta_end), first_step)

    def sigma(self, t) -> Tensor:
        t = _t64(t).clamp(0.0, self.t_max)
        ls = self.log_sigmas.to(t.device)
        lo = torch.floor(t).clamp(max=self.t_max - 1)
        frac = t - lo
        i = lo.long()
        return torch.exp(ls[i] * (1 - frac) + ls[i + 1] * frac)

    def t(self, sigma) -> Tensor:
        ls_all = self.log_sigmas.to(_t64(sigma).device)
        lsig = torch.log(_t64(sigma))
        i = torch.searchsorted(ls_all, lsig.detach().contiguous()).clamp(1, ls_all.numel() - 1)
        lo, hi = ls_all[i - 1], ls_all[i]
        frac = (lsig - lo) / (hi - lo)
        return (i - 1).to(torch.float64) + frac

    @property
    def time_unit(self) -> float:
        return self.t_max - self.first_step + 1.0

    def normalized_time(self, t) -> Tensor:
        """``tau = (t - first_step + 1) / time_unit``: step ``first_step`` is ``1/T`` and the last step is 1
        (the official LD3 code's time for latent models, whose network label is ``1000 tau - 1``)."""
        return (_t64(t) - self.first_step + 1.0) / self.time_unit

    def time_from_normalized(self, tau) -> Tensor:
        return _t64(tau) * self.time_unit + self.first_step - 1.0

    def to_dict(self) -> dict:
        return {**super().to_dict(), "n_train_steps": int(self.alphas_cumprod.numel()), "first_step": self.first_step}


class FlowMatching(NoiseSchedule):
    """Rectified flow / flow matching: ``x_t = (1 - t) x0 + t n``, so ``sigma = t / (1 - t)``, ``alpha = 1 - t``."""

    kind = "flow"
    latent_like = True

    def __init__(self, t_min: float = 0.002 / 1.002, t_max: float = 80.0 / 81.0):
        if not 0 < t_min < t_max < 1:
            raise ConfigError(f"FlowMatching needs 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = float(t_min), float(t_max)

    def sigma(self, t) -> Tensor:
        t = _t64(t)
        return t / (1.0 - t)

    def t(self, sigma) -> Tensor:
        s = _t64(sigma)
        return s / (1.0 + s)

    def alpha(self, t) -> Tensor:
        return 1.0 - _t64(t)


SCHEDULE_KINDS = {
    "edm": EDM,
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "vp_discrete": VPDiscrete,
    "flow": FlowMatching,
}


def build_noise_schedule(kind: str, **options) -> NoiseSchedule:
    """Build a schedule from a config entry; ``vp_discrete`` takes ``betas`` or ``beta_schedule``."""
    if kind not in SCHEDULE_KINDS:
        raise ConfigError(f"unknown noise schedule kind '{kind}'; choose one of {sorted(SCHEDULE_KINDS)}")
    if kind == "vp_discrete":
        first = int(options.pop("first_step", 0))
        if "alphas_cumprod" in options:
            return VPDiscrete(options["alphas_cumprod"], first)
        if "betas" in options:
            return VPDiscrete.from_betas(options["betas"], first)
        beta_schedule = options.pop("beta_schedule", "linear")
        ctor = {"linear": VPDiscrete.linear, "scaled_linear": VPDiscrete.scaled_linear}.get(beta_schedule)
        if ctor is None:
            raise ConfigError(f"unknown beta_schedule '{beta_schedule}'; choose linear or scaled_linear")
        return ctor(first_step=first, **options)
    return SCHEDULE_KINDS[kind](**options)
