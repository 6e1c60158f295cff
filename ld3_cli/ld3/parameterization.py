"""LD3's schedule parameterization: monotone by construction, endpoints fixed, exact baseline init.

Space ``u`` is either the log-SNR ``lambda = -log sigma`` (``param="lambda"``, natural for
pixel / EDM models) or the model's native time ``t`` (``param="time"``, natural for latent /
VP models).  With ``N`` unconstrained logits ``theta``:

    c = [0, cumsum(softmax(theta))]            (c_0 = 0 < c_1 < ... < c_N = 1)
    u_i = u_start + (u_end - u_start) * c_i    (u_start at sigma_max, u_end at sigma_min)
    sigmas_i = sigma(u_i)

so the grid is strictly monotone for any ``theta`` and ends exactly at ``sigma_max`` /
``sigma_min``.  Initialising ``theta = log(diff(c_baseline))`` reproduces any baseline grid
exactly (softmax of a log is the normalised increments).

Decoupled evaluation times (phase 2, Tong et al. Sec. 3.3): per-point offsets ``delta`` in the
same space, clamped to ``+- win_rate * min_i |u_{i+1} - u_i|`` (the gap is treated as a
constant), with the first and last points fixed:

    u_eval_i = u_i + clamp(delta_i, -w g, w g),  i = 1..N-1;   u_eval_0 = u_0, u_eval_N = u_N.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..schedules.noise import NoiseSchedule, log_snr, sigma_from_log_snr

SPACES = ("lambda", "time")


class ScheduleParameterization(nn.Module):
    """Learnable sigmas / sigmas_eval for ``n_steps`` solver steps.

    Args:
        schedule: the model's NoiseSchedule (gives sigma <-> t for ``space="time"``).
        init_sigmas: ``n_steps + 1`` decreasing sigmas reproduced exactly at initialisation.
        space: ``"lambda"`` or ``"time"``.
        win_rate: bound of the decoupled offsets as a fraction of the smallest gap.
    """

    def __init__(self, schedule: NoiseSchedule, init_sigmas: torch.Tensor, space: str = "lambda",
                 win_rate: float = 0.5):
        super().__init__()
        if space not in SPACES:
            raise ConfigError(f"train.param must be one of {SPACES}, got '{space}'")
        init_sigmas = torch.as_tensor(init_sigmas, dtype=torch.float64).detach().cpu()
        n = init_sigmas.numel() - 1
        if n < 1:
            raise ConfigError("a learned schedule needs at least 1 step")
        self.schedule = schedule
        self.space = space
        self.win_rate = float(win_rate)
        self.n_steps = n
        self.sigma_max = float(init_sigmas[0])
        self.sigma_min = float(init_sigmas[-1])
        u = self.to_space(init_sigmas)
        self.u_start, self.u_end = float(u[0]), float(u[-1])
        inc = (u[1:] - u[:-1]) / (self.u_end - self.u_start)
        if not bool(torch.all(inc > 0)):
            raise ConfigError("the initial schedule must be strictly decreasing in sigma")
        self.logits = nn.Parameter(torch.log(inc / inc.sum()))
        self.offsets = nn.Parameter(torch.zeros(n + 1, dtype=torch.float64))

    # -- space maps ---------------------------------------------------------------------------
    def to_space(self, sigmas: torch.Tensor) -> torch.Tensor:
        return log_snr(sigmas) if self.space == "lambda" else self.schedule.t(sigmas)

    def from_space(self, u: torch.Tensor) -> torch.Tensor:
        return sigma_from_log_snr(u) if self.space == "lambda" else self.schedule.sigma(u)

    # -- the grid -----------------------------------------------------------------------------
    def grid(self) -> torch.Tensor:
        """``u_0..u_N`` (differentiable in the logits)."""
        c = torch.cumsum(torch.softmax(self.logits, 0), 0)
        c = torch.cat([c.new_zeros(1), c[:-1], c.new_ones(1)])
        return self.u_start + (self.u_end - self.u_start) * c

    def forward(self, decoupled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(sigmas, sigmas_eval)``, float64 ``[N + 1]`` each, endpoints exact."""
        u = self.grid()
        sig = self._pin(self.from_space(u))
        if not decoupled:
            return sig, sig
        gap = (u[1:] - u[:-1]).abs().min().detach()
        bound = self.win_rate * gap
        shift = torch.clamp(self.offsets, -bound, bound)
        mask = torch.ones_like(shift)
        mask[0] = 0.0
        mask[-1] = 0.0
        sig_eval = self._pin(self.from_space(u + shift * mask))
        return sig, sig_eval

    def _pin(self, sig: torch.Tensor) -> torch.Tensor:
        ends = torch.zeros_like(sig)
        ends[0], ends[-1] = self.sigma_max, self.sigma_min
        keep = torch.ones_like(sig)
        keep[0] = keep[-1] = 0.0
        return sig * keep + ends

    @torch.no_grad()
    def values(self, decoupled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        s, e = self.forward(decoupled)
        return s.detach().clone(), e.detach().clone()
