"""The analytic first step (solver option ``analytic_first``, AMED / DyWeight's AFS): grid point 0 costs no network
evaluation, its noise estimate is ``x / sqrt(1 + sigma_0^2)``; NFE N runs N + 1 steps; the learned coefficients on
top of it start at the base solver, and gradients reach every coefficient and every time step."""
from __future__ import annotations

import math

import pytest
import torch
from ld3_test_helpers import CountingDenoiser

from ld3_cli.errors import ConfigError
from ld3_cli.ld3 import CoefficientParameterization
from ld3_cli.schedules import EDM, discretize
from ld3_cli.solvers import SOLVERS, get_solver, solve
from ld3_cli.solvers.base import Evaluator
from ld3_cli.solvers.config import SolverSetup
from ld3_cli.solvers.multistep import sample_multistep
from ld3_cli.solvers.sampler import Sampler

AFS = {"analytic_first": True}
CASES = [("euler", {}), ("dpmpp", {"order": 2}), ("dpmpp", {"order": 3}), ("unipc", {"order": 3}),
         ("unipc", {"order": 2, "variant": "bh1"}), ("ipndm", {"order": 3}), ("deis", {"order": 3})]


def _start(n=3, sigma=80.0):
    return sigma * torch.randn(n, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


def test_the_first_noise_estimate_is_the_closed_form_and_close_to_the_exact_one_for_unit_gaussian_data():
    """For data N(0, 1) the exact noise estimate at sigma is x sigma / (1 + sigma^2); the analytic one,
    x / sqrt(1 + sigma^2), is within 1 / (2 sigma^2) of it relatively, and costs no evaluation."""
    sig = torch.tensor([80.0, 5.0, 0.5], dtype=torch.float64)
    x = _start()
    net = CountingDenoiser()
    ev = Evaluator(net, sig, sig, None, x, analytic_first=True)
    den = ev(x, 0)
    eps = ev.eps(x, den, 0)
    assert net.calls == 0 and ev.calls == 0
    assert torch.allclose(eps, x / math.sqrt(1 + 80.0 ** 2), rtol=1e-15, atol=0)
    assert torch.allclose(den, x - 80.0 * eps, rtol=0, atol=1e-12)
    exact = x * 80.0 / (1 + 80.0 ** 2)
    rel = float(((eps - exact) / exact).abs().max())
    assert 0 < rel <= 1 / (2 * 80.0 ** 2)
    ev(x, 1)  # every other point is evaluated
    assert net.calls == ev.calls == 1


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
def test_nfe_n_runs_n_plus_one_steps_and_evaluates_the_network_n_times(name, opts):
    spec = get_solver(name)
    for nfe in (3, 5):
        steps = spec.steps_for(nfe, {**opts, **AFS})
        assert steps == spec.steps_for(nfe, opts) + 1 == nfe + 1
        assert spec.evaluations(steps, AFS) == nfe
        net = CountingDenoiser()
        sig = discretize("edm", steps, EDM())
        with torch.no_grad():
            solve(name, net, _start(), sig, **opts, **AFS)
        assert net.calls == nfe
    setup = SolverSetup.from_config({"name": name, **opts, **AFS}, 4)
    assert (setup.nfe, setup.steps) == (4, 5)


def test_too_few_steps_for_the_order_names_the_nfe_that_would_do():
    with pytest.raises(ConfigError, match="order 4 needs at least 4 steps \\(NFE 3\\); got 3 steps"):
        SolverSetup.from_config({"name": "ipndm", "order": 4, **AFS}, 2)


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
def test_the_first_step_replaces_only_the_first_evaluation(name, opts):
    """With a network that returns the analytic estimate at sigma_max, the run equals the evaluated one to rounding;
    with any other network only the first step differs."""
    sig = discretize("edm", 5, EDM())
    s0 = float(sig[0])

    class AnalyticAtTop(CountingDenoiser):
        def forward(self, x, sigma, cond=None):
            top = (sigma.view(-1, 1, 1, 1) == s0).to(x.dtype)
            analytic = x - s0 * x / math.sqrt(1 + s0 * s0)
            return top * analytic + (1 - top) * super().forward(x, sigma, cond)

    with torch.no_grad():
        evaluated = solve(name, AnalyticAtTop(), _start(), sig, **opts)
        analytic = solve(name, AnalyticAtTop(), _start(), sig, **opts, **AFS)
        plain = solve(name, CountingDenoiser(), _start(), sig, **opts)
    assert torch.allclose(analytic, evaluated, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(analytic, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("constraint", [False, "last"])
@pytest.mark.parametrize("name,opts", [c for c in CASES if c[1].get("order", 1) >= 2], ids=lambda v: str(v))
def test_learned_coefficients_start_at_the_base_solver_and_gradients_reach_every_parameter(name, opts, constraint):
    sig = discretize("edm", 5, EDM()).requires_grad_(True)
    base = get_solver(name).coefficients(sig, **opts, **AFS)  # the run option is not the table's
    coef = CoefficientParameterization.for_table(base, constraint=constraint)
    assert coef.lead.numel() == (base.steps if constraint is False else 1)
    x = _start()
    got = sample_multistep(CountingDenoiser(), x, sig, coef.apply(base), analytic_first=True)
    want = solve(name, CountingDenoiser(), x, sig.detach(), **opts, **AFS)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * float(want.abs().max()))
    (got ** 2).sum().backward()
    assert bool(torch.all(coef.lead.grad != 0))  # every freed lead weight, the analytic step's included
    for p, mask in ((coef.pred, coef.pred_mask), (coef.corr, coef.corr_mask)):
        if p is not None:
            assert bool(torch.all(p.grad[mask > 0] != 0)), (name, p.grad)
    assert bool(torch.all(sig.grad[1:-1] != 0))  # every inner time step, the one the analytic step lands on too


def test_the_option_round_trips_through_a_sampler_and_stays_out_of_old_store_keys():
    sig = discretize("edm", 5, EDM())
    s = Sampler("unipc", sig, {"order": 3, **AFS})
    back = Sampler.from_tensors(s.tensors(), s.plain())
    assert back.analytic_first and torch.equal(back.solve(CountingDenoiser(), _start()),
                                               s.solve(CountingDenoiser(), _start()))
    off = SolverSetup.from_config({"name": "unipc", "order": 3, "analytic_first": False}, 4)
    assert off.key_fields() == SolverSetup.from_config({"name": "unipc", "order": 3}, 4).key_fields()
    on = SolverSetup.from_config({"name": "unipc", "order": 3, "analytic_first": True}, 4)
    assert on.key_fields()["analytic_first"] is True


def test_solvers_that_evaluate_their_own_list_do_not_take_it():
    """Heun and the stock samplers evaluate the network at sigma_max: the option is not theirs."""
    for name in ("heun", "k_euler", "k_dpmpp_2m", "k_heun"):
        assert "analytic_first" not in SOLVERS[name].declared
        with pytest.raises(ConfigError, match="analytic_first"):
            solve(name, CountingDenoiser(), _start(), discretize("edm", 4, EDM()), analytic_first=True)
