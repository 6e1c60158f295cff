"""DiffusersDenoiser conversions without diffusers: exact eps / v / x0 predictors on Gaussian data give the
closed-form posterior mean; gradients w.r.t. sigma are exact; alphas_cumprod agree with diffusers' schedulers."""
from __future__ import annotations

import pytest
import torch

from ld3_cli.models.base import ConditionSpec
from ld3_cli.models.diffusers import (
    DiffusersDenoiser,
    alphas_cumprod_from_config,
    schedule_from_scheduler_config,
)
from ld3_cli.schedules.noise import FlowMatching, VPDiscrete


class ExactVPPredictor(torch.nn.Module):
    """The exact eps / v / x0 predictor for x0 ~ N(mean, var) under a discrete VP schedule (float64)."""

    def __init__(self, schedule, mean, var, kind):
        super().__init__()
        self.schedule, self.mean, self.var, self.kind = schedule, mean, var, kind
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, sample, timestep):
        s = self.schedule.sigma(timestep.double()).view(-1, 1, 1, 1)
        a = (1 + s ** 2).rsqrt()
        st = a * s
        tot = a ** 2 * self.var + st ** 2
        ex0 = self.mean + a * self.var * (sample - a * self.mean) / tot
        en = st * (sample - a * self.mean) / tot
        return {"eps": en, "x0": ex0, "v": a * en - st * ex0}[self.kind]


@pytest.mark.parametrize("kind", ["eps", "v", "x0"])
def test_conversions_are_exact_on_gaussian_data(kind):
    """With the exact network, D(x, sigma) is the closed-form posterior mean in sigma-space."""
    sched, _, _, _ = schedule_from_scheduler_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                                    "beta_end": 0.012, "num_train_timesteps": 1000})
    mean, var = 0.4, 0.7
    d = DiffusersDenoiser(ExactVPPredictor(sched, mean, var, kind), sched, kind, (2, 3, 3), net_dtype=torch.float64,
                          condition=ConditionSpec())
    g = torch.Generator().manual_seed(3)
    sigma = torch.tensor([0.03, 0.1, 0.77, 3.3, 14.0], dtype=torch.float64)
    x = mean + torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64) * (var + sigma.view(-1, 1, 1, 1) ** 2).sqrt()
    expected = mean + var / (var + sigma.view(-1, 1, 1, 1) ** 2) * (x - mean)
    torch.testing.assert_close(d(x, sigma), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", [
    {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
])
def test_alphas_cumprod_match_diffusers(cfg):
    pytest.importorskip("diffusers")
    from diffusers import EulerDiscreteScheduler

    ref = EulerDiscreteScheduler(num_train_timesteps=1000, **cfg).alphas_cumprod.double()
    ours = alphas_cumprod_from_config({**cfg, "num_train_timesteps": 1000})
    torch.testing.assert_close(ours, ref, rtol=5e-5, atol=1e-9)
    VPDiscrete(ours)                                          # strictly decreasing: a valid schedule


def test_gradients_flow_through_sigma_and_x():
    """LD3 differentiates the sampler w.r.t. the time steps: dD/dsigma must be the analytic derivative."""
    sched, _, _, _ = schedule_from_scheduler_config({"beta_schedule": "linear", "num_train_timesteps": 1000})
    mean, var = -0.2, 0.5
    d = DiffusersDenoiser(ExactVPPredictor(sched, mean, var, "eps"), sched, "eps", (1, 2, 2), net_dtype=torch.float64)
    x = torch.linspace(-2, 2, 12, dtype=torch.float64).view(3, 1, 2, 2)
    sigma = torch.tensor([0.07, 0.9, 6.0], dtype=torch.float64, requires_grad=True)
    d(x, sigma).sum().backward()
    s = sigma.detach().view(-1, 1, 1, 1)
    analytic = (-2 * s * var / (var + s ** 2) ** 2 * (x - mean)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(sigma.grad, analytic, rtol=1e-6, atol=1e-9)


def test_scheduler_config_mapping():
    config = {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction", "beta_schedule": "scaled_linear",
              "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"}
    sched, pred, ti, _ = schedule_from_scheduler_config(config)
    assert isinstance(sched, VPDiscrete) and pred == "v" and ti == "t" and sched.t_max == 999
    old, pred, _, _ = schedule_from_scheduler_config({"_class_name": "GaussianDDPMScheduler", "timesteps": 1000,
                                                       "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02})
    assert pred == "eps" and old.sigma_min == pytest.approx((1e-4 / (1 - 1e-4)) ** 0.5, rel=1e-12)
    flow, pred, ti, _ = schedule_from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                        "num_train_timesteps": 1000, "shift": 3.0})
    assert isinstance(flow, FlowMatching) and pred == "flow" and ti == "t*1000"
    assert flow.t_min == pytest.approx(3 * 0.001 / (1 + 2 * 0.001), rel=1e-12)
    assert flow.sigma_max == pytest.approx(80.0)
    _, pred, _, _ = schedule_from_scheduler_config({"beta_schedule": "linear"}, {"prediction": "x0"})
    assert pred == "x0"
