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

Decoupled evaluation times (phase 2, Tong et al. Sec. 3.3): per-point shifts in the same space,
bounded by the window ``W = win_rate * min_i |u_{i+1} - u_i|`` (the gap is treated as a constant),
with the first and last points fixed:

    u_eval_i = u_i + shift_i,  i = 1..N-1;   u_eval_0 = u_0, u_eval_N = u_N.

With ``decouple_first`` the first evaluation moves too (``u_eval_0 = u_0 + shift_0``, towards the grid only, so
never above ``sigma_max``; DyWeight's time scale of its first evaluation): the grid still starts at ``sigma_max``
(the noise is drawn there), only the network's noise level at that evaluation is learned.  The last point is never
evaluated by a solver that ends on a step.

The offsets' units (``offset_units``) decide what a learning rate means:

* ``"window"`` (default): ``shift_i = W * clamp(delta_i, -1, 1)`` -- ``delta`` is the fraction of
  the window, so one step size means the same for every noise schedule and space;
* ``"official"``: ``shift_i = clamp(delta_i * U, -W, W)`` with ``delta`` in the official LD3 code's
  units: log-SNR for ``space="lambda"``, normalised time ``t / time_unit`` (``t in (0, 1]``; one
  training step = 1/1000 for a 1000-step DDPM) for ``space="time"`` (``U`` = ``time_unit``).

At a decoupled evaluation the network sees the state scaled by ``c_i`` (``eval_scale``, see
:meth:`ScheduleParameterization.eval_scales` and :class:`~ld3_cli.solvers.base.Evaluator`):

* ``"model"`` (default): ``c_i = alpha(sigma_i) / alpha(sigma_eval_i)`` with the model's own alpha --
  the network sees the state of the step time with the noise label of the evaluation time, as in
  the official LD3 code (``c = 1`` for EDM models);
* ``"vp"``: the same with VP's ``alpha = 1 / sqrt(1 + sigma^2)`` for any model (a learned rescaling
  for EDM models too);
* ``"none"``: ``c = 1`` (the network sees the state itself at the evaluation noise level).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..schedules.noise import NoiseSchedule, log_snr, sigma_from_log_snr

SPACES = ("lambda", "time")
OFFSET_UNITS = ("window", "official")
EVAL_SCALES = ("model", "vp", "none")


class ScheduleParameterization(nn.Module):
    """Learnable sigmas / sigmas_eval for ``n_steps`` solver steps.

    Args:
        schedule: the model's NoiseSchedule (gives sigma <-> t for ``space="time"``).
        init_sigmas: ``n_steps + 1`` decreasing sigmas reproduced exactly at initialisation.
        space: ``"lambda"`` or ``"time"``.
        win_rate: bound of the decoupled shifts as a fraction of the smallest gap.
        offset_units: ``"window"`` or ``"official"`` (module docstring).
        eval_scale: ``"model"``, ``"vp"`` or ``"none"`` (module docstring).
        decouple_first: the first evaluation's time is learned too (module docstring).
    """

    def __init__(self, schedule: NoiseSchedule, init_sigmas: torch.Tensor, space: str = "lambda",
                 win_rate: float = 0.5, offset_units: str = "window", eval_scale: str = "model",
                 decouple_first: bool = False):
        super().__init__()  # space, offset_units, eval_scale: checked where the options entered (TrainOptions)
        init_sigmas = torch.as_tensor(init_sigmas, dtype=torch.float64).detach().cpu()
        n = init_sigmas.numel() - 1
        if n < 1:
            raise ConfigError("a learned schedule needs at least 1 step")
        self.schedule = schedule
        self.space = space
        self.win_rate = float(win_rate)
        self.offset_units = offset_units
        self.eval_scale = eval_scale
        self.decouple_first = bool(decouple_first)
        self.unit = 1.0 if (space == "lambda" or offset_units == "window") else float(schedule.time_unit)
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
        raw = self.from_space(u)
        sig = self._pin(raw)
        if not decoupled:
            return sig, sig
        mask = torch.ones_like(u)
        mask[0] = float(self.decouple_first)
        mask[-1] = 0.0
        moved = self.from_space(u + self.shifts(u) * mask)
        sig_eval = self._pin(moved)
        if self.decouple_first:  # sigma_max times the first shift's factor: exactly sigma_max at a zero shift
            sig_eval = torch.cat([self.sigma_max * moved[:1] / raw[:1], sig_eval[1:]])
        return sig, sig_eval

    def window(self, u: torch.Tensor) -> torch.Tensor:
        """The bound ``W = win_rate * min gap`` of the shifts (no gradient)."""
        return self.win_rate * (u[1:] - u[:-1]).abs().min().detach()

    def shifts(self, u: torch.Tensor) -> torch.Tensor:
        """``shift_i`` in the space ``u`` (before the endpoint mask), within ``[-W, W]``; with ``decouple_first``
        the first one only towards the grid (never above ``sigma_max``, where a model may not be defined)."""
        bound = self.window(u)
        if self.offset_units == "window":
            shift = bound * torch.clamp(self.offsets, -1.0, 1.0)
        else:
            shift = torch.clamp(self.offsets * self.unit, -bound, bound)
        if self.decouple_first:
            inward = torch.sign(u[1] - u[0]).detach()
            first = shift[:1]
            kept = inward * torch.clamp(inward * first, min=0.0)
            # the value keeps to the grid's side; the gradient is the unbounded shift's (a straight-through bound),
            # so a first offset pushed outwards still feels the loss and can come back
            shift = torch.cat([first + (kept - first).detach(), shift[1:]])
        return shift

    @torch.no_grad()
    def window_fractions(self) -> torch.Tensor:
        """``|shift_i| / W`` at the points that move (``[N - 1]`` inner ones, ``[N]`` with ``decouple_first``): how
        far the offsets moved (1 = the bound)."""
        u = self.grid()
        return (self.shifts(u) / self.window(u)).abs()[0 if self.decouple_first else 1:-1]

    def eval_scales(self, sigmas: torch.Tensor, sigmas_eval: torch.Tensor) -> Optional[torch.Tensor]:
        """State scales ``c_i`` ``[N + 1]`` of a decoupled evaluation (``None`` for ``eval_scale="none"``)."""
        return state_scales(self.eval_scale, self.schedule, sigmas, sigmas_eval)

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


def state_scales(mode: str, schedule: NoiseSchedule, sigmas: torch.Tensor,
                 sigmas_eval: torch.Tensor) -> Optional[torch.Tensor]:
    """``c_i = alpha(sigmas_i) / alpha(sigmas_eval_i)`` for ``mode`` ``"model"`` / ``"vp"``; ``None`` for ``"none"``."""
    if mode == "none":
        return None
    if mode == "vp":
        return torch.sqrt((1.0 + sigmas_eval ** 2) / (1.0 + sigmas ** 2))
    if mode == "model":
        return schedule.alpha_at(sigmas) / schedule.alpha_at(sigmas_eval)
    raise ConfigError(f"train.eval_scale must be one of {EVAL_SCALES}, got '{mode}'")
