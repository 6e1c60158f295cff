"""Decoupled evaluation (LD3): the network sees ``c_i x_i`` at ``sigmas_eval[i]``; noise-form solvers use the
noise estimate at the evaluation point.  Checked against the official LD3 code's formulas written out in the
model's native VP time (docs/concepts.md, "Decoupled evaluation times")."""
import pytest
import torch

from ld3_cli.ld3.parameterization import state_scales
from ld3_cli.models.adapters import NetworkDenoiser
from ld3_cli.schedules import EDM, VPDiscrete, discretize
from ld3_cli.solvers import SOLVERS, solve
from ld3_cli.solvers.base import Evaluator


def eps_net(x_t, t_in, cond=None):
    """A nonlinear eps-predictor of the native VP state and time label (any function serves)."""
    w = torch.linspace(0.5, 1.5, x_t[0].numel(), dtype=x_t.dtype).view_as(x_t[0])
    return torch.tanh(w * x_t + t_in.view(-1, 1, 1, 1) / 700.0)


VP = VPDiscrete.linear(1000)


def vp_denoiser():
    return NetworkDenoiser(eps_net, VP, prediction="eps", time_input="t")


def test_vp_evaluation_is_the_official_one():
    """Official LD3: the network gets the native state x_t = alpha(t1) x at label t2, and
    x0 = (x_t - s(t2) eps) / alpha(t2).  In sigma-space with c = alpha(t1) / alpha(t2) that is D(c x, sigma2)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) * 5
    sig = torch.tensor([12.0, 3.0], dtype=torch.float64)
    sig_eval = torch.tensor([12.0, 2.2], dtype=torch.float64)
    c = state_scales("model", VP, sig, sig_eval)
    ev = Evaluator(vp_denoiser(), sig, sig_eval, None, x, c, "eval")
    den, eps = ev(x, 1), None
    eps = ev.eps(x, den, 1)
    t1, t2 = VP.t(sig[1]), VP.t(sig_eval[1])
    a1, a2 = VP.alpha(t1), VP.alpha(t2)
    s2 = a2 * sig_eval[1]  # the native noise scale at t2
    x_t = a1 * x
    net_eps = eps_net(x_t, t2.expand(3))
    assert torch.allclose(den, (x_t - s2 * net_eps) / a2, rtol=1e-12, atol=1e-12)
    assert torch.allclose(eps, net_eps, rtol=1e-10, atol=1e-12)  # the official iPNDM / Euler use eps itself
    # ld3's earlier semantics: the network sees alpha(t2) x and the slope is taken at the step's sigma
    plain = Evaluator(vp_denoiser(), sig, sig_eval, None, x, None, "step")
    d2 = plain(x, 1)
    assert torch.allclose(d2, x - sig_eval[1] * eps_net(a2 * x, t2.expand(3)), rtol=1e-12, atol=1e-12)
    assert torch.allclose(plain.eps(x, d2, 1), (x - d2) / sig[1], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_without_decoupling_every_option_gives_the_same_result(name):
    """sigmas_eval == sigmas and c == 1: the evaluation semantics cannot matter."""
    sched = EDM()
    steps = 4
    sig = discretize("logsnr", steps, sched)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    den = NetworkDenoiser(lambda z, t, c: torch.tanh(z / 9), sched, prediction="eps", time_input="sigma")
    out = [solve(name, den, x, sig, sig_eval, eval_scales=scales, noise_estimate=ne)
           for sig_eval, scales, ne in ((None, None, "eval"), (sig, torch.ones_like(sig), "step"), (sig, None, "eval"))]
    assert torch.allclose(out[0], out[1], rtol=1e-13, atol=1e-12)
    assert torch.equal(out[0], out[2])


def test_euler_with_offsets_uses_the_noise_at_the_evaluation_point():
    """Official Euler (EDM): d = (x - D(x; sigma2)) / sigma2, x <- x + (sigma1_{i+1} - sigma1_i) d."""
    sched = EDM()
    sig = discretize("edm", 4, sched)
    sig_eval = sig * torch.tensor([1.0, 0.9, 1.1, 0.95, 1.0], dtype=torch.float64)
    x0 = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80

    def den(x, s, c=None):
        return torch.sin(x / (1 + s.view(-1, 1, 1, 1)))

    x = x0.clone()
    for i in range(4):
        d = (x - den(x, sig_eval[i].expand(2))) / sig_eval[i]
        x = x + (sig[i + 1] - sig[i]) * d
    got = solve("euler", den, x0, sig, sig_eval, noise_estimate="eval")
    assert torch.allclose(got, x, rtol=1e-12, atol=1e-12)
    other = solve("euler", den, x0, sig, sig_eval, noise_estimate="step")
    assert not torch.allclose(other, x, rtol=1e-6)  # the two semantics really differ once offsets are on


def test_unknown_noise_estimate_is_refused():
    from ld3_cli.errors import ConfigError

    sig = discretize("edm", 2, EDM())
    with pytest.raises(ConfigError, match="noise_estimate"):
        solve("ipndm", lambda x, s, c: x, torch.zeros(1, 1, 2, 2), sig, order=2, noise_estimate="sometimes")
