"""EDM preconditioners (VP, VE, iDDPM, EDM) as ld3 sigma-space denoisers.

EDM wraps a raw network ``F`` as ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``, which is
already the ld3 convention ``x = x0 + sigma n``, ``D -> x0``.  The coefficients (``sigma`` per
sample):

============  ========================  ===========================  =====================  ===========================
precond       c_skip                    c_out                        c_in                   c_noise
============  ========================  ===========================  =====================  ===========================
VP            1                         -sigma                       1/sqrt(1+sigma^2)      (M-1) t(sigma)
VE            1                         sigma                        1                      log(sigma/2)
iDDPM         1                         -sigma                       1/sqrt(1+sigma^2)      M-1-argmin_j |u_j - sigma|
EDM           sd^2/(sigma^2+sd^2)       sigma sd/sqrt(sigma^2+sd^2)  1/sqrt(sigma^2+sd^2)   log(sigma)/4
============  ========================  ===========================  =====================  ===========================

with VP's ``t(sigma) = (sqrt(b0^2 + 2 bd log(1+sigma^2)) - b0) / bd`` (``b0 = beta_min``,
``bd = beta_d``) and ``sd = sigma_data``.  As in EDM, the coefficients are computed in float32
and the network runs in float16 only when ``use_fp16`` is set and the input is on CUDA.

ld3 attributes: ``schedule`` is an :class:`~ld3_cli.schedules.noise.EDM` schedule on the range
EDM's sampler uses with this network, ``[max(0.002, sigma_min), min(80, sigma_max)]``
(``[0.002, 80]`` for the public VP and ADM checkpoints); ``shape = (img_channels, R, R)``;
``condition`` is ``class`` with ``label_dim`` classes for conditional networks (``cond`` is a
``[B]`` long tensor of labels, or a ``[B, label_dim]`` float tensor of label weights);
``decode`` is the identity (images in ``[-1, 1]``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ...schedules.noise import EDM
from ..base import ConditionSpec, Denoiser
from .networks import NETWORKS

#: the sigma range of EDM's sampler (``generate.py`` defaults); a network's own range clips it
EDM_SAMPLER_SIGMA_MIN = 0.002
EDM_SAMPLER_SIGMA_MAX = 80.0


class EDMPrecondBase(Denoiser):
    """Shared machinery: network construction, labels, dtype handling.  Subclasses give the coefficients."""

    precond_name = "base"
    default_model_type = "SongUNet"
    out_channel_factor = 1

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 model_type: str | None = None, **model_kwargs: Any):
        super().__init__()
        model_type = model_type or self.default_model_type
        if model_type not in NETWORKS:
            raise ConfigError(f"EDM model_type '{model_type}' is unknown; supported: {sorted(NETWORKS)}")
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.label_dim = int(label_dim)
        self.use_fp16 = bool(use_fp16)
        self.model_type = model_type
        self.model = NETWORKS[model_type](img_resolution=self.img_resolution, in_channels=self.img_channels,
                                          out_channels=self.img_channels * self.out_channel_factor,
                                          label_dim=self.label_dim, **model_kwargs)
        self.shape = (self.img_channels, self.img_resolution, self.img_resolution)
        self.condition = (ConditionSpec(kind="class", num_classes=self.label_dim) if self.label_dim
                          else ConditionSpec())
        self.name = f"edm-{self.precond_name}"

    def _set_schedule(self) -> None:
        lo = max(EDM_SAMPLER_SIGMA_MIN, float(self.sigma_min))
        hi = min(EDM_SAMPLER_SIGMA_MAX, float(self.sigma_max))
        self.schedule = EDM(lo, hi)

    # -- coefficients: sigma [B,1,1,1] float32 -> (c_skip, c_out, c_in, c_noise) ------------
    def coefficients(self, sigma: torch.Tensor):  # pragma: no cover - abstract
        raise NotImplementedError

    def class_labels(self, cond: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        """``cond`` -> float32 ``[B, label_dim]`` (one-hot for integer labels; zeros when None), or None."""
        if not self.label_dim:
            return None
        if cond is None:
            return torch.zeros(batch, self.label_dim, device=device)
        cond = torch.as_tensor(cond, device=device)
        if cond.is_floating_point() and cond.dim() == 2 and cond.shape[1] == self.label_dim:
            return cond.to(torch.float32)
        if cond.is_floating_point() or cond.dim() != 1:
            raise ConfigError(f"class condition must be a [B] integer tensor of labels in [0, {self.label_dim}) "
                              f"or [B, {self.label_dim}] floats, got {tuple(cond.shape)} {cond.dtype}")
        # range check only where it is free: on an accelerator it would stall the solver loop every call
        if cond.device.type == "cpu" and cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= self.label_dim):
            raise ConfigError(f"class labels must lie in [0, {self.label_dim}), got "
                              f"{int(cond.min())}..{int(cond.max())}")
        return F.one_hot(cond.long(), self.label_dim).to(torch.float32)

    def network_dtype(self, x: torch.Tensor) -> torch.dtype:
        return torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any | None = None) -> torch.Tensor:
        """``D(x [B, C, H, W], sigma [B] (or scalar), cond) -> x0_hat`` with the shape and dtype of ``x``."""
        out_dtype = x.dtype
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        sigma = sigma.reshape(-1, 1, 1, 1)
        labels = self.class_labels(cond, x.shape[0], x.device)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        dtype = self.network_dtype(x)
        f_x = self.model((c_in * x).to(dtype), c_noise.flatten(), labels)  # noise labels stay float32
        f_x = f_x[:, :self.img_channels].to(torch.float32)
        return (c_skip * x + c_out * f_x).to(out_dtype)

    def describe(self) -> dict:
        return {**super().describe(), "precond": type(self).__name__, "model_type": self.model_type,
                "label_dim": self.label_dim, "use_fp16": self.use_fp16}


class VPPrecond(EDMPrecondBase):
    """Variance-preserving preconditioning (VP-SDE with linear beta: ``beta(t) = beta_min + beta_d t``)."""

    precond_name = "vp"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        # plain floats (no tensors): the network may be built under a meta-device context
        self.sigma_min = math.sqrt(math.expm1(0.5 * self.beta_d * self.epsilon_t ** 2 + self.beta_min * self.epsilon_t))
        self.sigma_max = math.sqrt(math.expm1(0.5 * self.beta_d + self.beta_min))
        self._set_schedule()

    def sigma(self, t) -> torch.Tensor:
        """VP time -> sigma: ``sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)``."""
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma) -> torch.Tensor:
        """sigma -> VP time (inverse of :meth:`sigma`)."""
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor):
        return 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(EDMPrecondBase):
    """Variance-exploding preconditioning (NCSN++ checkpoints)."""

    precond_name = "ve"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100.0, model_type: str = "SongUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._set_schedule()

    def coefficients(self, sigma: torch.Tensor):
        return 1.0, sigma, 1.0, (0.5 * sigma).log()


class iDDPMPrecond(EDMPrecondBase):
    """Improved-DDPM preconditioning: discrete noise levels ``u_j`` (buffer ``u``), learned-variance output dropped."""

    precond_name = "iddpm"
    default_model_type = "DhariwalUNet"
    out_channel_factor = 2

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                 model_type: str = "DhariwalUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.C_1, self.C_2, self.M = float(C_1), float(C_2), int(M)
        u = torch.zeros(self.M + 1, device="cpu")  # explicit device: also built under a meta-device context
        for j in range(self.M, 0, -1):
            ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=self.C_1)
            u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer("u", u)
        self.sigma_min = float(u[self.M - 1])
        self.sigma_max = float(u[0])
        self._set_schedule()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.sigma_min, self.sigma_max = float(self.u[self.M - 1]), float(self.u[0])
        self._set_schedule()
        return result

    def alpha_bar(self, j) -> torch.Tensor:
        j = torch.as_tensor(j, device="cpu")
        return (0.5 * np.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def sigma_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the nearest discrete level ``u_j`` for each sigma (shape of ``sigma``)."""
        u = self.u.to(sigma.device, torch.float32)
        return (sigma.to(torch.float32).reshape(-1, 1) - u.reshape(1, -1)).abs().argmin(1).reshape(sigma.shape)

    def coefficients(self, sigma: torch.Tensor):
        c_noise = self.M - 1 - self.sigma_index(sigma).to(torch.float32)
        return 1.0, -sigma, 1 / (sigma ** 2 + 1).sqrt(), c_noise


class EDMPrecond(EDMPrecondBase):
    """EDM preconditioning (Karras et al. 2022), e.g. the ADM imagenet-64 checkpoint."""

    precond_name = "edm"
    default_model_type = "DhariwalUNet"

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = math.inf, sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs: Any):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, **model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self._set_schedule()

    def coefficients(self, sigma: torch.Tensor):
        sd = self.sigma_data
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        return c_skip, c_out, c_in, sigma.log() / 4


#: EDM precond class name -> class
PRECONDS = {c.__name__: c for c in (VPPrecond, VEPrecond, iDDPMPrecond, EDMPrecond)}
