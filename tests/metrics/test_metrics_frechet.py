"""Frechet distance and streaming feature statistics."""
import numpy as np
import pytest
import scipy.linalg
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from ld3_cli.errors import ConfigError
from ld3_cli.metrics import StatsAccumulator, feature_statistics, frechet_distance


def _random_stats(rng, d, n):
    x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


def _fd_scipy(mu1, s1, mu2, s2):
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_matches_pytorch_fid_d64():
    rng = np.random.default_rng(0)
    mu1, s1 = _random_stats(rng, 64, 500)
    mu2, s2 = _random_stats(rng, 64, 300)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert ours > 1.0
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("d", [1, 2, 5, 12])
def test_matches_scipy_sqrtm_small(d):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_stats(rng, d, 40)
    mu2, s2 = _random_stats(rng, d, 60)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_fd_scipy(mu1, s1, mu2, s2), rel=1e-10, abs=1e-12)


def test_a_reference_takes_one_square_root_for_many_distances(monkeypatch):
    from ld3_cli.metrics import frechet as frechet_module

    rng = np.random.default_rng(4)
    mu_ref, s_ref = _random_stats(rng, 32, 200)
    sets = [_random_stats(rng, 32, 150) for _ in range(3)]
    expected = [_fd_scipy(mu, s, mu_ref, s_ref) for mu, s in sets]
    roots = []
    real_sqrt = frechet_module._sqrt_psd
    monkeypatch.setattr(frechet_module, "_sqrt_psd", lambda m: roots.append(m) or real_sqrt(m))
    ref = frechet_module.FrechetReference(mu_ref, s_ref)
    got = [ref.distance(mu, s) for mu, s in sets]
    assert got == pytest.approx(expected, rel=1e-9) and len(roots) == 1


def test_symmetric_in_arguments_and_accepts_tensors():
    rng = np.random.default_rng(3)
    mu1, s1 = _random_stats(rng, 16, 100)
    mu2, s2 = _random_stats(rng, 16, 100)
    a = frechet_distance(mu1, s1, mu2, s2)
    b = frechet_distance(torch.from_numpy(mu2), torch.from_numpy(s2), mu1, s1)
    assert a == pytest.approx(b, rel=1e-10)


def test_identical_distributions_give_zero():
    rng = np.random.default_rng(1)
    mu, s = _random_stats(rng, 64, 200)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_one_dimensional_closed_form():
    m1, s1, m2, s2 = 0.7, 1.3, -0.4, 0.25
    expected = (m1 - m2) ** 2 + (s1 - s2) ** 2
    got = frechet_distance(np.array([m1]), np.array([[s1 ** 2]]), np.array([m2]), np.array([[s2 ** 2]]))
    assert got == pytest.approx(expected, rel=1e-12)


def test_singular_covariances_exact():
    """Rank-deficient covariances (fewer samples than dimensions): no eps, no imaginary parts."""
    rng = np.random.default_rng(2)
    d, n = 64, 10
    x = rng.standard_normal((n, d))
    s = np.cov(x, rowvar=False)  # rank 9
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # Same singular covariance: tr sqrt(S S) = tr S, so FD = |mu1 - mu2|^2.
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-9)
    # Commuting diagonal covariances with zeros: FD = sum (sqrt a - sqrt b)^2.
    a = np.abs(rng.standard_normal(d))
    b = np.abs(rng.standard_normal(d))
    a[:20] = 0.0
    b[10:30] = 0.0
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(d), np.diag(a), np.zeros(d), np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_dimension_mismatch_raises():
    with pytest.raises(ConfigError, match="same feature extractor"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_accumulator_uneven_batches_equals_numpy_exact_rows():
    rng = np.random.default_rng(4)
    d = 24
    sizes = [7, 1, 0, 13, 29, 2]
    rows = [rng.standard_normal((k, d)) * 2.0 + 5.0 for k in sizes]
    acc = StatsAccumulator()
    for r in rows:
        acc.add(torch.from_numpy(r).float() if len(r) % 2 else r)  # mixed numpy / float32 torch input
    x = np.concatenate([r.astype(np.float32).astype(np.float64) if len(r) % 2 else r for r in rows])
    assert acc.n == sum(sizes) == x.shape[0]
    np.testing.assert_allclose(acc.mu, x.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(acc.sigma, np.cov(x, rowvar=False), rtol=1e-11, atol=1e-12)
    assert acc.mu.dtype == np.float64 and acc.sigma.dtype == np.float64
    # Dividing by a padded count (the official LD3 script) would be measurably different.
    padded_mean = x.sum(0) / 64
    assert not np.allclose(acc.mu, padded_mean)


def test_accumulator_large_offset_is_stable():
    """Centred (Chan) updates keep the covariance exact even when |mean| >> std."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 5)) * 1e-3 + 1e4
    acc = StatsAccumulator()
    for i in range(0, 300, 37):
        acc.add(x[i:i + 37])
    np.testing.assert_allclose(acc.sigma, np.cov(x, rowvar=False), rtol=1e-6, atol=1e-15)


def test_merge_equals_single_pass():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((101, 8))
    a, b = StatsAccumulator().add(x[:40]), StatsAccumulator().add(x[40:])
    a.merge(b).merge(StatsAccumulator())
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(a.mu, mu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(a.sigma, sigma, rtol=1e-12, atol=1e-14)
    assert a.n == 101


def test_covariance_needs_two_rows():
    acc = StatsAccumulator().add(np.ones((1, 3)))
    with pytest.raises(ConfigError, match="at least 2"):
        _ = acc.sigma
