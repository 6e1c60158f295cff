"""Solver contract: decoupled evaluation times, gradients, NFE bookkeeping, errors, agreement on a mixture."""
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import EDM, discretize
from ld3_cli.solvers import SOLVERS, get_solver, solve

ALL = [("euler", {}), ("heun", {}), ("dpmpp", {"order": 2}), ("dpmpp", {"order": 3}), ("unipc", {"order": 3}),
       ("unipc", {"order": 2, "variant": "bh1"}), ("ipndm", {"order": 4}), ("deis", {"order": 3})]


class CountingMixture:
    """Exact denoiser of a 2-component isotropic Gaussian mixture in 6-d (non-linear in x)."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.mu = torch.randn(2, 6, dtype=torch.float64, generator=g)
        self.var = torch.tensor([0.3, 0.8], dtype=torch.float64)
        self.calls = 0
        self.sigmas = []

    def __call__(self, x, sigma, cond=None):
        self.calls += 1
        self.sigmas.append(sigma.detach().clone())
        s2 = sigma.view(-1, 1, 1).to(x.dtype) ** 2
        v = self.var.view(1, 2, 1).to(x.dtype) + s2
        diff = x[:, None, :] - self.mu[None].to(x.dtype)
        logp = -0.5 * (diff ** 2).sum(-1) / v[..., 0] - 0.5 * x.shape[1] * torch.log(v[..., 0])
        w = torch.softmax(logp, dim=1)
        post = x[:, None, :] - s2 * diff / v
        return (w[..., None] * post).sum(1)


def x_T(dtype=torch.float64, n=3):
    return 80.0 * torch.randn(n, 6, dtype=dtype, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name,opts", ALL)
def test_sigmas_eval_equal_to_sigmas_is_the_plain_call(name, opts):
    den = CountingMixture()
    sig = discretize("logsnr", 5, EDM())
    a = solve(name, den, x_T(), sig, **opts)
    b = solve(name, den, x_T(), sig, sig.clone(), **opts)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name,opts", ALL)
def test_network_is_evaluated_at_sigmas_eval_and_nfe_is_as_stated(name, opts):
    den = CountingMixture()
    spec = get_solver(name)
    steps = 5
    sig = discretize("edm", steps, EDM())
    ev = sig * torch.linspace(1.0, 1.1, steps + 1, dtype=torch.float64)  # distinct evaluation times
    solve(name, den, x_T(), sig, ev, **opts)
    assert den.calls == spec.nfe(steps)
    used = torch.stack([s[0] for s in den.sigmas])
    assert all(bool(torch.isclose(u, ev).any()) for u in used), "every call must use a sigmas_eval value"
    assert not bool(torch.isclose(used, sig[-1]).any()), "sigma_min (the end point) is never evaluated"


@pytest.mark.parametrize("name,opts", ALL)
def test_gradients_match_finite_differences(name, opts):
    den = CountingMixture()
    sig0 = discretize("logsnr", 4, EDM(0.05, 20.0))
    ev0 = sig0 * torch.tensor([1.0, 1.05, 0.97, 1.02, 1.0], dtype=torch.float64)
    x0 = x_T(n=2) / 4

    def loss(x, s, e):
        return (solve(name, den, x, s, e, **opts) ** 2).sum()

    x = x0.clone().requires_grad_(True)
    s = sig0.clone().requires_grad_(True)
    e = ev0.clone().requires_grad_(True)
    loss(x, s, e).backward()
    eps = 1e-6
    for var, grad, base in ((0, x.grad, x0), (1, s.grad, sig0), (2, e.grad, ev0)):
        flat = base.flatten()
        for idx in range(0, flat.numel(), max(1, flat.numel() // 4)):
            plus, minus = flat.clone(), flat.clone()
            plus[idx] += eps * max(1.0, abs(float(flat[idx])))
            minus[idx] -= eps * max(1.0, abs(float(flat[idx])))
            args_p, args_m = [x0, sig0, ev0], [x0, sig0, ev0]
            args_p[var], args_m[var] = plus.view_as(base), minus.view_as(base)
            fd = (loss(*args_p) - loss(*args_m)) / (plus[idx] - minus[idx])
            g = grad.flatten()[idx]
            assert float(g) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), (var, idx)


def test_float32_state_keeps_dtype_and_matches_float64():
    den = CountingMixture()
    sig = discretize("logsnr", 6, EDM())
    out64 = solve("unipc", den, x_T(), sig)
    out32 = solve("unipc", den, x_T().float(), sig)
    assert out32.dtype == torch.float32
    assert float((out32.double() - out64).abs().max()) < 1e-3


def test_all_solvers_converge_to_the_same_answer_on_a_mixture():
    den = CountingMixture()
    ref = solve("unipc", den, x_T(), discretize("logsnr", 200, EDM()), order=3)
    for name, opts in ALL:
        errs = [float((solve(name, den, x_T(), discretize("logsnr", n, EDM()), **opts) - ref).abs().max())
                for n in (8, 32, 96)]
        assert errs[0] > errs[1] > errs[2] and errs[2] < 0.15 * errs[0], (name, opts, errs)


def test_nfe_bookkeeping_and_refusals():
    assert get_solver("heun").nfe(4) == 7 and get_solver("heun").steps_for_nfe(7) == 4
    with pytest.raises(ConfigError, match="odd NFE"):
        get_solver("heun").steps_for_nfe(6)
    for name in ("euler", "dpmpp", "unipc", "ipndm", "deis"):
        assert get_solver(name).steps_for_nfe(5) == 5 and get_solver(name).nfe(5) == 5
    with pytest.raises(ConfigError, match="at least 1"):
        get_solver("unipc").steps_for_nfe(0)
    with pytest.raises(ConfigError, match="needs at least 3 steps"):
        solve("dpmpp", CountingMixture(), x_T(), discretize("logsnr", 2, EDM()), order=3)
    with pytest.raises(ConfigError, match=r"solver.order must be 1, 2, 3 or 4, got 5"):
        solve("ipndm", CountingMixture(), x_T(), discretize("logsnr", 6, EDM()), order=5)
    with pytest.raises(ConfigError, match=r"unknown solver option\(s\) \['variant'\] of solver 'dpmpp'"):
        solve("dpmpp", CountingMixture(), x_T(), discretize("logsnr", 6, EDM()), variant="bh1")
    with pytest.raises(ConfigError, match=r"unknown solver option\(s\) \['variant'\] of solver 'deis'"):
        get_solver("deis").coefficients(discretize("logsnr", 6, EDM()), variant="bh1")
    with pytest.raises(ConfigError, match="solver.corrector must be true or false, got 'yes'"):
        solve("unipc", CountingMixture(), x_T(), discretize("logsnr", 6, EDM()), corrector="yes")
    with pytest.raises(ConfigError, match="unknown solver"):
        get_solver("rk45")
    with pytest.raises(ConfigError, match="strictly decreasing"):
        solve("euler", CountingMixture(), x_T(), torch.tensor([80.0, 1.0, 2.0, 0.002]))
    assert set(SOLVERS) == {"euler", "heun", "dpmpp", "unipc", "ipndm", "deis", "k_euler", "k_dpmpp_2m", "k_heun"}
    assert get_solver("ddim") is get_solver("euler")


def test_euler_is_ddim():
    """Euler in sigma-space equals the DDIM update x' = (s'/s) x + (1 - s'/s) D."""
    den = CountingMixture()
    sig = discretize("edm", 3, EDM())
    x = x_T()
    manual = x.clone()
    for i in range(3):
        r = sig[i + 1] / sig[i]
        manual = r * manual + (1 - r) * den(manual, sig[i].expand(manual.shape[0]))
    assert torch.allclose(solve("euler", den, x, sig), manual, rtol=0, atol=1e-12)


def test_callback_sees_every_grid_point():
    seen = []
    solve("dpmpp", CountingMixture(), x_T(), discretize("logsnr", 5, EDM()), callback=lambda i, x, d: seen.append(i))
    assert seen == [0, 1, 2, 3, 4]
