"""The embedded Gaussian-mixture denoiser: exactness, limits, sampling, fitting, caching."""
import pytest
import torch

from ld3_cli.models.mnist_gmm import GaussianMixtureDenoiser, fit_mixture, load_or_fit
from ld3_cli.store import Store


def brute_force_posterior_mean(model, x, sigma, labels=None):
    """E[x0 | x] with dense covariances and torch's multivariate normal (float64)."""
    xf = x.reshape(x.shape[0], -1).double()
    d = xf.shape[1]
    logps, means = [], []
    for k in range(model.K):
        cov = model.component_covariance(k).double() + sigma ** 2 * torch.eye(d, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(model.mu[k].double(), covariance_matrix=cov)
        logps.append(mvn.log_prob(xf) + model.log_pi[k].double())
        means.append(xf - sigma ** 2 * torch.linalg.solve(cov, (xf - model.mu[k].double()).T).T)
    means = torch.stack(means, 1)
    if labels is not None:
        return means[torch.arange(len(labels)), labels]
    w = torch.softmax(torch.stack(logps, 1), 1)
    return (w[:, :, None] * means).sum(1)


@pytest.fixture(scope="module")
def small_mixture():
    """A 3-class, 16-d mixture fitted to synthetic data (dense brute force is cheap)."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(200)
    mix = torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.3
    data = centers[labels] + torch.randn(600, 16, generator=g, dtype=torch.float64) @ mix
    params = fit_mixture(data.reshape(600, 1, 4, 4), labels, rank=5)
    return GaussianMixtureDenoiser(params, shape=(1, 4, 4), dtype=torch.float64)


@pytest.mark.parametrize("sigma", [0.002, 0.05, 0.5, 3.0, 80.0])
def test_matches_brute_force(small_mixture, sigma):
    m = small_mixture
    x = m.mu[torch.tensor([0, 1, 2, 0])].reshape(4, 1, 4, 4) + sigma * torch.randn(
        4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = m(x, torch.full((4,), sigma, dtype=torch.float64)).reshape(4, -1)
    assert torch.allclose(got, brute_force_posterior_mean(m, x, sigma), rtol=1e-9, atol=1e-10)
    labels = torch.tensor([2, 0, 1, 1])
    got_c = m(x, torch.full((4,), sigma, dtype=torch.float64), labels).reshape(4, -1)
    assert torch.allclose(got_c, brute_force_posterior_mean(m, x, sigma, labels), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 3.0, 80.0])
@pytest.mark.parametrize("scale", [2.0, 7.5])
def test_guided_mixture_equals_the_closed_form(small_mixture, sigma, scale):
    """model.guidance_scale=s: D_u + s (D_c - D_u), both posterior means computed densely; the null label (K) is
    the whole mixture, and labels and null labels mix in one batch."""
    from ld3_cli.models.guidance import CFGDenoiser

    m = small_mixture
    x = m.mu[torch.tensor([0, 1, 2, 0])].reshape(4, 1, 4, 4) + sigma * torch.randn(
        4, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sig = torch.full((4,), sigma, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 1])
    d_u, d_c = brute_force_posterior_mean(m, x, sigma), brute_force_posterior_mean(m, x, sigma, labels)
    guided = CFGDenoiser(m, scale, uncond=m.null_label)(x, sig, labels).reshape(4, -1)
    assert torch.allclose(guided, d_u + scale * (d_c - d_u), rtol=1e-9, atol=1e-9)
    mixed = m(x, sig, torch.tensor([m.null_label, 0, m.null_label, 1])).reshape(4, -1)
    assert torch.allclose(mixed[[0, 2]], d_u[[0, 2]], rtol=1e-9, atol=1e-10)
    assert torch.allclose(mixed[[1, 3]], brute_force_posterior_mean(m, x, sigma, torch.tensor([0, 0, 0, 1]))[[1, 3]],
                          rtol=1e-9, atol=1e-10)


def test_guidance_config_builds_the_exact_guided_model(monkeypatch):
    from ld3_cli.errors import ConfigError
    from ld3_cli.models import mnist_gmm

    g = torch.Generator().manual_seed(3)
    u = torch.linalg.qr(torch.randn(2, 784, 2, generator=g, dtype=torch.float64)).Q
    params = {"mu": torch.randn(2, 784, generator=g, dtype=torch.float64), "U": u,
              "lam": torch.tensor([[2.0, 1.0], [3.0, 0.5]], dtype=torch.float64),
              "v": torch.tensor([0.1, 0.2], dtype=torch.float64), "pi": torch.tensor([0.4, 0.6], dtype=torch.float64)}
    monkeypatch.setattr(mnist_gmm, "load_or_fit", lambda rank, cache=None: params)
    guided = mnist_gmm.build({"conditional": True, "guidance_scale": 7.5, "dtype": "float64"}, None)
    assert guided.scale == 7.5 and guided.name == "mnist_gmm-cfg7.5" and guided.uncond == 2
    assert not hasattr(guided, "sample_exact")  # a guided ODE has no closed-form distribution to compare with
    assert hasattr(mnist_gmm.build({"conditional": True, "dtype": "float64"}, None), "sample_exact")
    with pytest.raises(ConfigError, match="model.guidance_scale=7.5 guides a class-conditional mixture"):
        mnist_gmm.build({"guidance_scale": 7.5}, None)


@pytest.fixture(scope="module")
def mnist_mixture(fitted_cache):
    return GaussianMixtureDenoiser(load_or_fit(128, Store(fitted_cache).fit_cache()), dtype=torch.float64), fitted_cache


def test_mnist_mixture_matches_brute_force_in_784_dims(mnist_mixture):
    m, _ = mnist_mixture
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.7
    for sigma in (0.01, 1.0):
        got = m(x, torch.full((2,), sigma, dtype=torch.float64)).reshape(2, -1)
        assert torch.allclose(got, brute_force_posterior_mean(m, x, sigma), rtol=1e-7, atol=1e-8)


def test_limits(mnist_mixture):
    m, _ = mnist_mixture
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tiny = m(x, torch.full((3,), 1e-6, dtype=torch.float64))
    assert float((tiny - x).abs().max()) < 1e-5  # sigma -> 0: D(x) -> x
    huge = m(x * 1e4, torch.full((3,), 1e4, dtype=torch.float64))
    mixture_mean = (m.log_pi.exp()[:, None] * m.mu).sum(0)
    assert float((huge.reshape(3, -1) - mixture_mean).abs().max()) < 1e-3  # sigma -> inf: the mixture mean


def test_exact_samples_have_the_fitted_moments(mnist_mixture):
    m, _ = mnist_mixture
    n, k = 20000, 3
    x0, labels = m.sample_exact(n, generator=torch.Generator().manual_seed(4),
                                labels=torch.full((n,), k, dtype=torch.long))
    xf = x0.reshape(n, -1)
    sd = xf.std(0)
    assert float(((xf.mean(0) - m.mu[k]).abs() / (sd / n ** 0.5 + 1e-12)).max()) < 5.0  # 5 standard errors
    proj = (xf - m.mu[k]) @ m.U[k]  # variances along the fitted eigen-directions
    rel = proj.var(0) / m.lam[k]
    assert float((rel - 1).abs().max()) < 0.1  # chi-square spread at n=20000 is ~1%
    resid = (xf - m.mu[k]) - proj @ m.U[k].T  # the isotropic remainder
    per_dim = resid.pow(2).sum(1).mean() / (784 - 128)
    assert float(per_dim / m.v[k]) == pytest.approx(1.0, rel=0.02)
    _, free_labels = m.sample_exact(5000, generator=torch.Generator().manual_seed(5))
    freq = torch.bincount(free_labels, minlength=10).double() / 5000
    assert float((freq - m.log_pi.exp()).abs().max()) < 0.03


def test_fit_is_deterministic_and_cached_in_the_store(mnist_mixture):
    m, cache = mnist_mixture
    fits = list((cache / "mnist_gmm" / "fit").iterdir())
    assert len([p for p in fits if (p / "manifest.json").is_file()]) == 1
    again = load_or_fit(128, Store(cache).fit_cache())
    assert torch.equal(again["mu"], m.mu.double()) and torch.equal(again["U"], m.U.double())
    assert float(m.log_pi.exp().sum()) == pytest.approx(1.0)
    assert torch.all(m.lam[:, :-1] >= m.lam[:, 1:])  # eigenvalues sorted descending
    assert torch.all(m.v <= m.lam[:, -1])  # the remainder is below the kept spectrum
