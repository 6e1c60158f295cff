"""Turn a network that predicts eps / v / x0 / flow velocity in its own time into a sigma-space denoiser.

Given the canonical state ``x = x0 + sigma n`` and a schedule with ``x_t = alpha(t) x``:

* ``eps``:  ``x0 = x - sigma * eps``
* ``x0``:   ``x0 = out``
* ``v`` (VP, Salimans & Ho):  ``v = alpha_t n - s_t x0`` with ``s_t = alpha_t sigma`` so
  ``x0 = alpha_t x_t - s_t v`` (uses ``alpha_t^2 + s_t^2 = 1``)
* ``flow`` (``x_t = (1 - t) x0 + t n``, ``v = n - x0``): ``x0 = x_t - t v``

The network's time input is the native time ``t`` mapped by ``time_input``:
``"t"`` (as is), ``"t*1000"`` (continuous models trained on a 0..1000 scale), ``"t/T"``
(discrete step index divided by ``time_scale``), or ``"sigma"`` / ``"log_sigma/4"`` (EDM's
c_noise for VE / EDM preconditioning).

``time_rounding="nearest"`` (discrete-time schedules only) hands the network the native time rounded to
the nearest training step -- what ComfyUI's ``ModelSamplingDiscrete`` (and k-diffusion with
``quantize=True``) do -- while the state and the output conversion keep the exact sigma.  Gradients pass
the rounding unchanged (a straight-through estimate), so schedules can be learned for it.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError
from ..schedules.noise import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v", "flow")
TIME_INPUTS = ("t", "t*1000", "t/T", "sigma", "log_sigma/4")
TIME_ROUNDINGS = ("none", "nearest")


def round_to_steps(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to the nearest integer step in the forward pass, unchanged in the backward pass."""
    return t + (torch.round(t) - t).detach()


def native_time_input(schedule: NoiseSchedule, sigma: torch.Tensor, time_input: str, time_scale: float = 1.0,
                      time_rounding: str = "none"):
    """Map sigma ``[B]`` to the network's time input ``[B]`` (float64); ``time_rounding`` as in the module docstring."""
    if time_input == "sigma":
        return sigma.to(torch.float64)
    if time_input == "log_sigma/4":
        return torch.log(sigma.to(torch.float64)) / 4
    t = schedule.t(sigma)
    if time_rounding == "nearest":
        t = round_to_steps(t)
    if time_input == "t":
        return t
    if time_input == "t*1000":
        return t * 1000.0
    if time_input == "t/T":
        return t / time_scale
    raise ConfigError(f"unknown time_input '{time_input}'; choose one of {TIME_INPUTS}")


def prediction_to_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                     alpha: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convert a network output to ``x0`` (all of shape ``[B, C, H, W]``; ``sigma``/``alpha``/``t`` ``[B]``)."""
    s = sigma.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    a = alpha.to(x.dtype).view_as(s)
    if prediction == "eps":
        return x - s * out
    if prediction == "x0":
        return out
    if prediction == "v":
        x_t = a * x
        return a * x_t - (a * s) * out
    if prediction == "flow":
        if t is None:
            raise ConfigError("flow prediction needs the native time t")
        tt = t.to(x.dtype).view_as(s)
        return a * x - tt * out
    raise ConfigError(f"unknown prediction type '{prediction}'; choose one of {PREDICTIONS}")


class NetworkDenoiser(torch.nn.Module):
    """Wraps ``net(x_t, time_input, cond) -> prediction`` as ``D(x, sigma, cond) -> x0``.

    Args:
        net: the network (an ``nn.Module`` or callable).
        schedule: its noise schedule.
        prediction: one of :data:`PREDICTIONS`.
        time_input: one of :data:`TIME_INPUTS`.
        time_scale: divisor for ``time_input="t/T"``.
        call: optional ``call(net, x_t, t_in, cond)`` for networks with other signatures.

    ``time_rounding`` (attribute, ``"none"`` or ``"nearest"``; set with :func:`set_time_rounding`): see the
    module docstring.
    """

    time_rounding = "none"

    def __init__(self, net, schedule: NoiseSchedule, prediction: str = "eps", time_input: str = "t",
                 time_scale: float = 1.0, call: Optional[Callable[..., torch.Tensor]] = None):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"unknown prediction type '{prediction}'; choose one of {PREDICTIONS}")
        if time_input not in TIME_INPUTS:
            raise ConfigError(f"unknown time_input '{time_input}'; choose one of {TIME_INPUTS}")
        self.net = net
        self.schedule = schedule
        self.prediction = prediction
        self.time_input = time_input
        self.time_scale = float(time_scale)
        self.call = call

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        sigma = sigma.reshape(-1).expand(x.shape[0]) if sigma.numel() == 1 else sigma
        t = self.schedule.t(sigma)
        alpha = self.schedule.alpha(t)
        x_t = x * alpha.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        t_in = native_time_input(self.schedule, sigma, self.time_input, self.time_scale,
                                 self.time_rounding).to(x.dtype)
        out = self.call(self.net, x_t, t_in, cond) if self.call is not None else self.net(x_t, t_in, cond)
        return prediction_to_x0(self.prediction, out.to(x.dtype), x, sigma, alpha, t)


def network_adapters(model) -> list:
    """The :class:`NetworkDenoiser` modules inside ``model`` (none for analytic or EDM-preconditioned models)."""
    return [m for m in model.modules() if isinstance(m, NetworkDenoiser)] if isinstance(model, torch.nn.Module) else []


def set_time_rounding(model, mode: str) -> None:
    """Make ``model``'s network see its time rounded to training steps (``"nearest"``) or exact (``"none"``).

    Raises ConfigError for an unknown mode, or for ``"nearest"`` on a model without a discrete-time network.
    """
    from ..schedules.noise import VPDiscrete

    if mode not in TIME_ROUNDINGS:
        raise ConfigError(f"model.time_rounding must be one of {TIME_ROUNDINGS}, got '{mode}'")
    adapters = [a for a in network_adapters(model) if isinstance(a.schedule, VPDiscrete)
                and a.time_input in ("t", "t*1000", "t/T")]
    if mode != "none" and not adapters:
        raise ConfigError(f"model.time_rounding={mode} needs a discrete-time network (DDPM, LDM, Stable Diffusion); "
                          f"model '{getattr(model, 'name', type(model).__name__)}' has continuous time -- remove it")
    for a in adapters:
        a.time_rounding = mode
