"""Learned solver coefficients (corrections on the base solvers' multistep tables)."""
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.ld3 import CoefficientParameterization, learn_schedule
from ld3_cli.ld3.parameterization import state_scales
from ld3_cli.schedules import EDM, VPDiscrete, discretize
from ld3_cli.solvers import get_solver, solve
from ld3_cli.solvers.multistep import sample_multistep
from ld3_cli.solvers.sampler import Sampler

CASES = [("dpmpp", {"order": 2}), ("dpmpp", {"order": 3}), ("dpmpp", {"order": 2, "solver_type": "heun"}),
         ("unipc", {"order": 3, "variant": "bh2"}), ("unipc", {"order": 2, "variant": "bh1"}),
         ("unipc", {"order": 3, "corrector": False}), ("ipndm", {"order": 3}), ("ipndm", {"order": 4}),
         ("deis", {"order": 3})]


class Mixture:
    """Exact denoiser of a 2-component isotropic Gaussian mixture on [B, 1, 2, 3] states (non-linear in x)."""

    def __init__(self):
        g = torch.Generator().manual_seed(11)
        self.mu = torch.randn(2, 6, dtype=torch.float64, generator=g)
        self.var = torch.tensor([0.2, 0.9], dtype=torch.float64)

    def __call__(self, x, sigma, cond=None):
        flat = x.flatten(1)
        s2 = sigma.view(-1, 1, 1).to(x.dtype) ** 2
        v = self.var.view(1, 2, 1) + s2
        diff = flat[:, None, :] - self.mu[None]
        logp = -0.5 * (diff ** 2).sum(-1) / v[..., 0] - 3 * torch.log(v[..., 0])
        w = torch.softmax(logp, dim=1)
        return (w[..., None] * (flat[:, None, :] - s2 * diff / v)).sum(1).view_as(x)


def start(n=3):
    return 20.0 * torch.randn(n, 1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def grids(steps):
    sched = VPDiscrete.linear(1000)
    sig = discretize("time_uniform", steps, sched)
    ev = sig * torch.cat([torch.ones(1), 1 + 0.08 * torch.sin(torch.arange(1, steps)), torch.ones(1)]).double()
    return sig, ev, state_scales("model", sched, sig, ev)


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("steps", [4, 7])
def test_zero_corrections_are_the_base_solver(name, opts, steps):
    """At initialisation the learned solver equals the base solver (decoupled grid and state scales included)."""
    sig, ev, scales = grids(steps)
    base = get_solver(name).coefficients(sig, **opts)
    learned = CoefficientParameterization.for_table(base).apply(base)
    want = solve(name, Mixture(), start(), sig, ev, eval_scales=scales, **opts)
    got = sample_multistep(Mixture(), start(), sig, learned, ev, eval_scales=scales)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))


@pytest.mark.parametrize("name,opts", [c for c in CASES if c[1].get("order", 1) >= 2])
def test_gradients_reach_every_coefficient_and_only_real_history_slots(name, opts):
    sig, ev, scales = grids(5)
    base = get_solver(name).coefficients(sig, **opts)
    coef = CoefficientParameterization.for_table(base)
    out = sample_multistep(Mixture(), start(), sig, coef.apply(base), ev, eval_scales=scales)
    (out ** 2).sum().backward()
    for p, mask in ((coef.pred, coef.pred_mask), (coef.corr, coef.corr_mask)):
        if p is None:
            continue
        assert bool(torch.all(p.grad[mask > 0] != 0)), (name, p.grad)
        assert bool(torch.all(p.grad[mask == 0] == 0))  # a slot before the first step has no history


CONSTANT = 0.37  # the constant denoiser's output


def _random_corrections(base, **kwargs) -> CoefficientParameterization:
    """Corrections for ``base`` (``for_table`` with ``kwargs``), every one drawn from a standard normal (seed 1)."""
    coef = CoefficientParameterization.for_table(base, **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in coef.parameters_list():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return coef


def _on_constant(sig, table, x0, callback=None):
    """``table`` run on ``sig`` from ``x0`` with a denoiser that always answers ``CONSTANT``."""
    c = torch.full((1, 1, 2, 3), CONSTANT, dtype=torch.float64)
    return sample_multistep(lambda x, s, cond: c.expand_as(x), x0, sig, table, callback=callback)


def _exact_on_constant(sig, i, x0):
    """The exact ODE solution at ``sig[i]`` for the constant denoiser: ``r x0 + (1 - r) c``, ``r = sig[i] / sig[0]``."""
    r = sig[i] / sig[0]
    return r * x0 + (1 - r) * CONSTANT


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
def test_a_constant_denoiser_stays_exact_for_any_corrections(name, opts):
    """The corrections weigh history differences, so the weights on the outputs keep summing to b_i."""
    sig = discretize("logsnr", 6, EDM())
    base = get_solver(name).coefficients(sig, **opts)
    x0 = start(1) * 4
    out = _on_constant(sig, _random_corrections(base).apply(base), x0)
    assert torch.allclose(out, _exact_on_constant(sig, -1, x0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
def test_constraint_last_keeps_every_step_but_the_last_exact_for_a_constant_denoiser(name, opts):
    """``coefficient_constraint="last"``: with any corrections a constant denoiser is still followed exactly up to
    the last grid step, and only the last step's lead weight moves the end point off it."""
    sig = discretize("logsnr", 6, EDM())
    base = get_solver(name).coefficients(sig, **opts)
    coef = _random_corrections(base, constraint="last")
    x0 = start(1) * 4
    states = {}
    out = _on_constant(sig, coef.apply(base), x0, callback=lambda i, x, d: states.setdefault(i, x.clone()))
    for i in range(1, 6):
        assert torch.allclose(states[i], _exact_on_constant(sig, i, x0), rtol=1e-10, atol=1e-10), i
    assert not torch.allclose(out, _exact_on_constant(sig, 6, x0), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        coef.lead.zero_()
    out = _on_constant(sig, coef.apply(base), x0)
    assert torch.allclose(out, _exact_on_constant(sig, 6, x0), rtol=1e-10, atol=1e-10)


def test_a_sampler_round_trips_through_tensors_and_json():
    sig, ev, scales = grids(5)
    base = get_solver("unipc").coefficients(sig, order=3)
    coef = CoefficientParameterization.for_table(base)
    with torch.no_grad():
        coef.pred.fill_(0.1)
        coef.corr.fill_(-0.05)
    s = Sampler("unipc", sig, {"order": 3}, ev, scales, "eval", coef.apply(base))
    back = Sampler.from_tensors(s.tensors(), s.plain())
    assert torch.equal(back.solve(Mixture(), start()), s.solve(Mixture(), start()))
    assert not torch.allclose(s.solve(Mixture(), start()), solve("unipc", Mixture(), start(), sig, ev,
                                                                  eval_scales=scales, order=3))


def test_solvers_without_history_weights_are_refused():
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    for name, nfe in (("heun", 5), ("euler", 4)):
        with pytest.raises(ConfigError, match="coefficient|no coefficients"):
            learn_schedule(Mixture2D(), name, nfe, x, x, learn=["coefficients"], iters_phase3=1)


class Mixture2D(torch.nn.Module):
    schedule = EDM()
    shape = (1, 2, 3)

    def forward(self, x, sigma, cond=None):
        return Mixture()(x, sigma, cond)
