"""DMN: closed-form step integrals, objective, and the trust-constr optimisation (LD3's variant)."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import minimize_scalar

from ld3_cli.schedules import EDM, VPDiscrete, VPLinear, discretize
from ld3_cli.search.dmn import dmn_objective, dmn_search, node_weights, step_integrals, step_order, trunc_num


def _lagrange(nodes, k, x):
    out = 1.0
    for m, xm in enumerate(nodes):
        if m != k:
            out *= (x - xm) / (nodes[k] - xm)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_step_integrals_sum_to_increment_and_match_quadrature(seed):
    rng = np.random.default_rng(seed)
    lam = np.cumsum(np.concatenate(([rng.uniform(-5, -3)], rng.uniform(0.05, 2.0, 7))))
    for s in range(len(lam) - 1):
        for p in (1, 2, 3):
            if s - p + 1 < 0:
                continue
            js = step_integrals(lam, s, p)
            assert len(js) == p
            inc = math.exp(lam[s + 1]) - math.exp(lam[s])
            assert sum(js) == pytest.approx(inc, rel=1e-10)
            nodes = lam[s - p + 1: s + 1]
            for k in range(p):
                ref, _ = quad(lambda x, nodes=nodes, k=k: math.exp(x) * _lagrange(nodes, k, x), lam[s], lam[s + 1],
                              epsabs=0, epsrel=1e-12)
                assert js[k] == pytest.approx(ref, rel=1e-8, abs=1e-12 * abs(inc))


def test_orders_truncation_and_weights():
    assert [step_order(s, 6) for s in range(6)] == [1, 2, 3, 3, 2, 1]
    assert [step_order(s, 3) for s in range(3)] == [1, 2, 1]
    assert [step_order(s, 2) for s in range(2)] == [1, 1]
    assert [trunc_num(n) for n in (3, 7, 8, 10)] == [3, 3, 0, 0]
    sig = np.array([80.0, 1.0, 0.002])
    lam = -np.log(sig)
    np.testing.assert_allclose(node_weights(lam, latent=False), sig, rtol=1e-12)  # sigma/alpha = EDM sigma
    # latent: sigma_vp^2 / alpha_vp with alpha_vp = 1/sqrt(1+sigma^2)
    np.testing.assert_allclose(node_weights(lam, latent=True), sig ** 2 / np.sqrt(1 + sig ** 2), rtol=1e-12)


def test_objective_closed_form_for_two_and_three_steps():
    lam = -np.log(np.array([80.0, 0.5, 0.002]))
    e, w = np.exp(lam), np.exp(-lam)
    assert dmn_objective(lam, False) == pytest.approx(w[0] * (e[1] - e[0]) + w[1] * (e[2] - e[1]), rel=1e-13)
    # N = 3: steps of order 1, 2, 1; s = 1 < truncNum = 3 -> Euclidean norm of the weighted J's
    lam = -np.log(np.array([80.0, 2.0, 0.1, 0.002]))
    e, w = np.exp(lam), np.exp(-lam)
    j0, j1 = step_integrals(lam, 1, 2)
    ref = w[0] * (e[1] - e[0]) + math.hypot(w[0] * j0, w[1] * j1) + w[2] * (e[3] - e[2])
    assert dmn_objective(lam, False) == pytest.approx(ref, rel=1e-13)


def test_objective_signed_sums_beyond_truncation():
    # N = 8 -> truncNum = 0: higher-order steps add signed weighted J's per node, then |.| per node
    rng = np.random.default_rng(3)
    lam = np.cumsum(np.concatenate(([-4.4], rng.uniform(0.3, 1.5, 8))))
    n, w = 8, np.exp(-lam)
    c, total = np.zeros(n + 1), 0.0
    for s in range(n):
        p = step_order(s, n)
        js = step_integrals(lam, s, p)
        if p == 1:
            total += abs(w[s] * js[0])
        else:
            for k, j in zip(range(s - p + 1, s + 1), js):
                c[k] += w[k] * j
    assert dmn_objective(lam, False) == pytest.approx(total + np.abs(c).sum(), rel=1e-13)


# Reference: LD3's StepOptim on EDM (sigma 80 -> 0.002), pixel weights, uniform-logSNR init.
REFERENCE = {
    4: [80, 2.4605, 0.6803, 0.0917, 0.002],
    5: [80, 3.0628, 1.1135, 0.3737, 0.0723, 0.002],
}


@pytest.mark.parametrize("n", [4, 5])
def test_edm_reference_values(n):
    sig = discretize("dmn", n, EDM())
    np.testing.assert_allclose(sig.numpy(), REFERENCE[n], atol=1e-4, rtol=0)
    assert sig[0].item() == 80.0 and sig[-1].item() == 0.002


@pytest.mark.parametrize("schedule,latent,n", [(EDM(), False, 3), (EDM(), False, 6),
                                               (VPDiscrete.scaled_linear(), True, 4), (VPLinear(), True, 5)])
def test_optimum_keeps_endpoints_is_monotone_and_improves_on_init(schedule, latent, n):
    res = dmn_search(n, schedule, latent=latent)
    lam = res.lambdas
    assert lam[0] == -math.log(schedule.sigma_max) and lam[-1] == -math.log(schedule.sigma_min)
    assert np.all(np.diff(lam) > 0)
    assert res.objective <= res.init_objective
    assert res.objective == pytest.approx(dmn_objective(lam, latent), rel=1e-14)
    sig = discretize("dmn", n, schedule, latent=latent)
    np.testing.assert_allclose(sig.numpy()[1:-1], np.exp(-lam[1:-1]), rtol=1e-12)


def test_latent_default_follows_the_schedule_and_uses_time_uniform_init():
    vp = VPLinear()
    res = dmn_search(4, vp)  # latent_like -> latent weights, uniform-t init
    t = torch.linspace(vp.t_max, vp.t_min, 5, dtype=torch.float64)
    np.testing.assert_allclose(res.init[1:-1], -torch.log(vp.sigma(t)).numpy()[1:-1], rtol=1e-12)
    assert np.allclose(discretize("dmn", 4, vp).numpy(), discretize("dmn", 4, vp, latent=True).numpy())
    assert not np.allclose(discretize("dmn", 4, vp).numpy(), discretize("dmn", 4, vp, latent=False).numpy())


def test_two_steps_latent_matches_scalar_minimisation():
    # N = 2: objective = w0 (E1 - E0) + w1 (E2 - E1), a 1-D problem with an interior minimum
    vp = VPLinear()
    lam0, lam2 = -math.log(vp.sigma_max), -math.log(vp.sigma_min)
    ref = minimize_scalar(lambda x: dmn_objective(np.array([lam0, x, lam2]), True), bounds=(lam0, lam2),
                          method="bounded", options={"xatol": 1e-10})
    res = dmn_search(2, vp, latent=True)
    assert res.lambdas[1] == pytest.approx(ref.x, abs=1e-4)
    assert res.objective <= ref.fun + 1e-9


def test_sigma_range_options_and_one_step():
    sig = discretize("dmn", 4, EDM(), sigma_min=0.01, sigma_max=10.0)
    assert sig[0].item() == 10.0 and sig[-1].item() == 0.01 and bool(torch.all(sig[1:] < sig[:-1]))
    assert discretize("dmn", 1, EDM()).tolist() == [80.0, 0.002]
