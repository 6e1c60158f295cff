"""GITS: dynamic programme, cost matrix, fine grid, and an end-to-end search on a Gaussian model."""
import itertools

import numpy as np
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import EDM, VPDiscrete, discretize
from ld3_cli.search.gits import (
    GITSSettings,
    gits_cost_matrix,
    gits_dp,
    gits_grid,
    gits_search,
    path_cost,
    warmup_noise,
)
from ld3_cli.solvers import solve


# -- DP -----------------------------------------------------------------------------------------
def _brute_force(cost, k, coeff):
    m = cost.shape[0]
    best, best_path = np.inf, None
    for mid in itertools.combinations(range(1, m - 1), k - 1):  # lexicographic: first minimiser wins ties
        path = [0, *mid, m - 1]
        v = path_cost(cost, path, coeff)
        if v < best:
            best, best_path = v, path
    return best, best_path


@pytest.mark.parametrize("seed", range(6))
def test_dp_matches_brute_force_on_random_costs(seed):
    rng = np.random.default_rng(seed)
    for m in range(2, 10):
        cost = np.triu(rng.normal(size=(m, m)) + (0.5 if seed % 2 else 0.0), k=1)  # signed, like `dev`
        for coeff in (1.0, 1.15, 0.8):
            for k in range(1, m):
                path = gits_dp(cost, k, coeff)
                best, ref = _brute_force(cost, k, coeff)
                assert path == ref
                assert path_cost(cost, path, coeff) == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_dp_square_cost_gives_equal_spacing():
    idx = np.arange(61)
    cost = np.triu((idx[None, :] - idx[:, None]).astype(float) ** 2, k=1)
    assert gits_dp(cost, 6, 1.0) == [0, 10, 20, 30, 40, 50, 60]
    assert gits_dp(cost, 1, 1.0) == [0, 60]
    assert gits_dp(cost, 60, 1.0) == list(range(61))
    with pytest.raises(ConfigError):
        gits_dp(cost, 61, 1.0)


def test_dp_coefficient_weights_later_jumps_more():
    # with coeff > 1 later (low-noise) jumps are penalised, so they get shorter than the first ones
    idx = np.arange(61)
    cost = np.triu((idx[None, :] - idx[:, None]).astype(float) ** 2, k=1)
    path = gits_dp(cost, 4, 1.15)
    gaps = np.diff(path)
    assert path[0] == 0 and path[-1] == 60 and np.all(np.diff(gaps) <= 0) and gaps[0] > gaps[-1]


# -- grid -----------------------------------------------------------------------------------------
def test_edm_grid_contains_the_published_cifar10_schedule():
    grid = gits_grid(EDM(), 61)
    assert grid.numel() == 61 and grid[0].item() == 80.0 and grid[-1].item() == 0.002
    readme = [80, 10.9836, 3.8811, 1.584, 0.5666, 0.1698, 0.002]
    np.testing.assert_allclose(grid[[0, 19, 27, 33, 39, 45, 60]].numpy(), readme, atol=6e-5)


def test_time_uniform_grid_is_uniform_in_native_time():
    sched = VPDiscrete.scaled_linear()
    grid = gits_grid(sched, 61, grid="time_uniform")
    t = sched.t(grid)
    np.testing.assert_allclose(t.numpy(), np.linspace(999, 0, 61), atol=1e-9)
    with pytest.raises(ConfigError):
        gits_grid(sched, 61, grid="cosine")


# -- cost matrix ----------------------------------------------------------------------------------
def _naive_cost(states, den, grid, metric):
    m, b = states.shape[:2]
    x, d = states.double(), den.double()
    c = np.zeros((m, m))

    def dev(y, n):
        a, start, end = y.flatten(), x[0, n].flatten(), x[-1, n].flatten()
        u = (end - start) / torch.linalg.norm(end - start)
        v = end - a
        return torch.linalg.norm(v - torch.dot(v, u) * u).item()

    for i in range(m - 1):
        for j in range(i + 1, m):
            vals = []
            for n in range(b):
                slope = (x[i, n] - d[i, n]) / grid[i]
                xhat = x[i, n] + (grid[j] - grid[i]) * slope
                if metric == "dev":
                    vals.append(dev(xhat, n) - (0.0 if j == m - 1 else dev(x[j, n], n)))
                else:
                    vals.append(torch.linalg.norm((xhat - x[j, n]).flatten(), ord=1 if metric == "l1" else 2).item())
            c[i, j] = np.mean(vals)
    return c


@pytest.mark.parametrize("metric", ["dev", "l1", "l2"])
def test_cost_matrix_matches_naive_loops(metric):
    g = torch.Generator().manual_seed(5)
    m, b = 7, 3
    states = torch.randn(m, b, 2, 3, 3, generator=g)
    den = torch.randn(m - 1, b, 2, 3, 3, generator=g)
    grid = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.1, 0.01], dtype=torch.float64)
    got = gits_cost_matrix(states, den, grid, metric, chunk_elems=40)  # small chunks exercise the chunking
    ref = _naive_cost(states, den, grid, metric)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-12)
    assert torch.all(torch.tril(got) == 0)
    summed = gits_cost_matrix(states, den, grid, metric, reduce="sum")
    np.testing.assert_allclose(summed.numpy(), b * ref, rtol=1e-10, atol=1e-12)


def test_cost_of_a_straight_trajectory_is_zero():
    # D(x, sigma) = a constant => x_i = a + sigma_i * n exactly, and every Euler jump lands on it
    g = torch.Generator().manual_seed(1)
    a, n = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    grid = gits_grid(EDM(), 11)
    states = a[None] + grid[:, None, None] * n[None]
    den = a[None].expand(10, -1, -1)
    for metric in ("dev", "l1", "l2"):
        assert gits_cost_matrix(states, den, grid, metric).abs().max().item() < 1e-9


# -- end to end on a Gaussian data distribution ---------------------------------------------------
DIM = 16
_g = torch.Generator().manual_seed(0)
MU = torch.randn(DIM, generator=_g, dtype=torch.float64)
STD = torch.rand(DIM, generator=_g, dtype=torch.float64) * 1.5 + 0.05


def gaussian_denoiser(x, sigma, cond=None):
    """Exact x0-predictor for data ~ N(MU, diag(STD^2))."""
    s2 = sigma.to(x.dtype).view(-1, *[1] * (x.dim() - 1)) ** 2
    return MU + STD ** 2 / (STD ** 2 + s2) * (x - MU)


def _search(n_steps, **kw):
    opts = {"denoiser": gaussian_denoiser, "n_warmup": 12, "batch_size": 5, "shape": (DIM,), "dtype": torch.float64}
    opts.update(kw)
    return discretize("gits", n_steps, EDM(), **opts)


@pytest.mark.parametrize("metric", ["dev", "l1", "l2"])
def test_end_to_end_schedule_is_a_valid_subset_of_the_grid(metric):
    grid = gits_grid(EDM(), 61)
    for n in (1, 3, 6):
        sig = _search(n, metric=metric)
        assert sig.numel() == n + 1 and sig.dtype == torch.float64
        assert sig[0].item() == 80.0 and sig[-1].item() == 0.002
        assert bool(torch.all(sig[1:] < sig[:-1]))
        assert all(bool(torch.any(grid == v)) for v in sig)


def test_end_to_end_is_deterministic_and_batch_size_invariant():
    res_a = gits_search(5, EDM(), gaussian_denoiser, n_warmup=12, batch_size=5, shape=(DIM,), dtype=torch.float64)
    res_b = gits_search(5, EDM(), gaussian_denoiser, n_warmup=12, batch_size=12, shape=(DIM,), dtype=torch.float64)
    torch.testing.assert_close(res_a.cost, res_b.cost, rtol=1e-12, atol=1e-12)
    assert res_a.path == res_b.path and res_a.teacher_nfe == 12 * 60
    # the same noise given explicitly reproduces the drawn one; another seed changes the costs
    res_c = gits_search(5, EDM(), gaussian_denoiser, noise=warmup_noise(12, (DIM,), 0).double(), dtype=torch.float64)
    torch.testing.assert_close(res_a.cost, res_c.cost, rtol=1e-12, atol=1e-12)
    res_d = gits_search(5, EDM(), gaussian_denoiser, n_warmup=12, seed=99, shape=(DIM,), dtype=torch.float64)
    assert not torch.allclose(res_a.cost, res_d.cost)
    assert res_a.path == gits_dp(res_a.cost, 5, 1.15)


def test_cost_matrix_from_the_warmup_matches_the_teacher_trajectory():
    # rebuild the teacher states by hand with the same solver and grid and compare the mean cost
    res = gits_search(4, EDM(), gaussian_denoiser, n_warmup=6, batch_size=6, n_grid=21, shape=(DIM,),
                      dtype=torch.float64, metric="l2")
    x = warmup_noise(6, (DIM,), 0).double() * 80.0
    states, dens = [], []
    def record(i, xi, di):
        states.append(xi)
        dens.append(di)

    final = solve("ipndm", gaussian_denoiser, x, res.grid, callback=record)
    cost = gits_cost_matrix(torch.stack(states + [final]), torch.stack(dens), res.grid, "l2")
    torch.testing.assert_close(res.cost, cost, rtol=1e-12, atol=1e-12)
    assert res.sigmas.tolist() == res.grid[res.path].tolist()


def test_gits_schedule_beats_edm_for_euler():
    # the cost models one Euler jump, so Euler on the GITS schedule should track the teacher better
    x = warmup_noise(32, (DIM,), 1000).double() * 80.0
    ref = solve("ipndm", gaussian_denoiser, x, discretize("edm", 200, EDM()))
    for n in (4, 6):
        err = {}
        for kind in ("gits", "edm"):
            sig = _search(n) if kind == "gits" else discretize("edm", n, EDM())
            err[kind] = (solve("euler", gaussian_denoiser, x, sig) - ref).norm(dim=-1).mean().item()
        assert err["gits"] < 0.85 * err["edm"], err


def test_settings_object_and_keyword_options_are_one_search():
    kw = {"n_warmup": 7, "seed": 4, "n_grid": 25, "metric": "l1", "coeff": 1.3, "teacher_solver": "dpmpp",
          "teacher_order": 2, "shape": (DIM,), "dtype": torch.float64}
    by_keyword = gits_search(4, EDM(), gaussian_denoiser, **kw)
    settings = GITSSettings(**kw)
    by_object = gits_search(4, EDM(), gaussian_denoiser, settings=settings)
    assert torch.equal(by_keyword.cost, by_object.cost) and by_keyword.path == by_object.path
    assert by_keyword.grid.numel() == 25 and by_keyword.n_warmup == 7
    # the registered kind forwards both forms unchanged; keyword options override the object's fields
    assert torch.equal(discretize("gits", 4, EDM(), denoiser=gaussian_denoiser, settings=settings), by_object.sigmas)
    other = gits_search(4, EDM(), gaussian_denoiser, settings=settings, seed=5)
    assert not torch.equal(other.cost, by_object.cost)
    assert torch.equal(other.cost, gits_search(4, EDM(), gaussian_denoiser, **{**kw, "seed": 5}).cost)


def test_errors():
    with pytest.raises(ConfigError, match="denoiser"):
        discretize("gits", 4, EDM())
    with pytest.raises(ConfigError, match="n_warmups"):  # a misspelt option is refused by name, not ignored
        _search(3, n_warmups=4)
    with pytest.raises(ConfigError, match="n_grid"):
        _search(10, n_grid=8)
    with pytest.raises(ConfigError, match="metric"):
        _search(3, metric="cos")
    with pytest.raises(ConfigError, match="shape"):
        discretize("gits", 3, EDM(), denoiser=gaussian_denoiser)
