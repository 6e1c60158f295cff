"""Noise schedules (native time <-> sigma) and the closed-form baseline discretizations."""
import math

import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import EDM, FlowMatching, VPCosine, VPDiscrete, VPLinear, discretize

SCHEDULES = [EDM(), VPLinear(), VPCosine(), VPDiscrete.linear(1000), VPDiscrete.scaled_linear(1000, first_step=1),
             FlowMatching()]


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.kind)
def test_sigma_t_round_trip_and_monotone(sched):
    sig = torch.exp(torch.linspace(math.log(sched.sigma_min), math.log(sched.sigma_max), 200, dtype=torch.float64))
    assert torch.allclose(sched.sigma(sched.t(sig)), sig, rtol=1e-10)
    t = torch.linspace(sched.t_min, sched.t_max, 200, dtype=torch.float64)
    s = sched.sigma(t)
    assert bool(torch.all(s[1:] > s[:-1])), "sigma must grow with native time"


@pytest.mark.parametrize("sched", [VPLinear(), VPCosine(), VPDiscrete.linear(1000), FlowMatching()],
                         ids=lambda s: s.kind)
def test_alpha_matches_the_native_forward_process(sched):
    t = torch.linspace(sched.t_min, sched.t_max, 50, dtype=torch.float64)
    a, s = sched.alpha(t), sched.sigma(t)
    if sched.kind == "flow":  # x_t = (1 - t) x0 + t n  ->  alpha = 1 - t, alpha * sigma = t
        assert torch.allclose(a, 1 - t) and torch.allclose(a * s, t)
    else:  # VP: alpha_t^2 + (alpha_t sigma)^2 = 1
        assert torch.allclose(a ** 2 * (1 + s ** 2), torch.ones_like(t))


def test_vp_linear_closed_form():
    sched = VPLinear(0.1, 20.0)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    log_alpha = -(20.0 - 0.1) * t ** 2 / 4 - 0.1 * t / 2
    assert torch.allclose(sched.alpha(t), torch.exp(log_alpha))


def test_vp_discrete_interpolates_log_sigma_between_steps():
    sched = VPDiscrete.linear(1000)
    lo, hi = sched.sigma(torch.tensor(10.0)), sched.sigma(torch.tensor(11.0))
    mid = sched.sigma(torch.tensor(10.25))
    assert float(mid) == pytest.approx(math.exp(0.75 * math.log(lo) + 0.25 * math.log(hi)), rel=1e-12)


def test_vp_discrete_from_the_shared_ddpm_betas_matches_its_alphas(ddpm_weights):
    sd = torch.load(ddpm_weights, map_location="cpu", weights_only=True)
    sched = VPDiscrete.from_betas(sd["beta_t"].double(), first_step=1)
    assert torch.allclose(sched.alphas_cumprod, sd["alpha_t"].double(), rtol=1e-5)
    steps = torch.arange(1, 1001, dtype=torch.float64)
    abar = sd["alpha_t"].double()[1:]
    # the file's alpha_t is a float32 cumulative product: 1 - abar near step 1 carries ~1e-4 relative error
    assert torch.allclose(sched.sigma(steps), torch.sqrt((1 - abar) / abar), rtol=2e-3)
    assert sched.sigma_min == pytest.approx(0.01483, rel=1e-3) and sched.sigma_max == pytest.approx(158.2, rel=1e-3)


def test_time_uniform_on_vp_discrete_hits_integer_steps():
    sched = VPDiscrete.linear(1001, first_step=1)  # steps 1..1000 as in the MNIST DDPM
    sig = discretize("time_uniform", 9, sched)
    t = sched.t(sig)
    assert torch.allclose(t, torch.tensor([1000, 889, 778, 667, 556, 445, 334, 223, 112, 1], dtype=torch.float64),
                          atol=1e-8)


@pytest.mark.parametrize("sched", SCHEDULES, ids=lambda s: s.kind)
@pytest.mark.parametrize("kind", ["time_uniform", "time_quadratic", "logsnr", "edm"])
@pytest.mark.parametrize("n", [1, 4, 10])
def test_discretizations_have_exact_endpoints_and_decrease(sched, kind, n):
    sig = discretize(kind, n, sched)
    assert sig.numel() == n + 1 and sig.dtype == torch.float64
    assert float(sig[0]) == pytest.approx(sched.sigma_max, rel=1e-12)
    assert float(sig[-1]) == pytest.approx(sched.sigma_min, rel=1e-12)
    assert bool(torch.all(sig[1:] < sig[:-1]))


def test_closed_forms():
    sched = EDM(0.002, 80.0)
    lam = -torch.log(discretize("logsnr", 8, sched))
    uniform = torch.full((8,), float(lam[-1] - lam[0]) / 8, dtype=torch.float64)
    assert torch.allclose(lam[1:] - lam[:-1], uniform, atol=1e-12)
    edm = discretize("edm", 4, sched, rho=7.0)
    i = torch.arange(5, dtype=torch.float64) / 4
    assert torch.allclose(edm, (80 ** (1 / 7) + i * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7)
    # time_quadratic on EDM (t = sigma) is the EDM schedule with rho = 2
    assert torch.allclose(discretize("time_quadratic", 6, sched), discretize("edm", 6, sched, rho=2.0))


def test_custom_schedule_from_values_and_file(tmp_path):
    sched = VPDiscrete.linear(1000)
    vals = [999.0, 500.0, 100.0, 0.0]
    sig = discretize("custom", 3, sched, values=vals, space="t")
    assert torch.allclose(sched.t(sig), torch.tensor(vals, dtype=torch.float64), atol=1e-9)
    p = tmp_path / "s.txt"
    p.write_text("80, 10, 1, 0.002")
    assert discretize("custom", 3, EDM(), path=str(p)).tolist() == [80.0, 10.0, 1.0, 0.002]
    with pytest.raises(ConfigError, match="n_steps \\+ 1"):
        discretize("custom", 4, EDM(), path=str(p))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        discretize("custom", 3, EDM(), values=[80, 1, 10, 0.002])
    with pytest.raises(ConfigError, match="unknown discretization"):
        discretize("fancy", 3, EDM())
