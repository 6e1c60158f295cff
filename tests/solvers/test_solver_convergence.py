"""Global convergence orders of every solver against the exact probability-flow ODE solution.

For Gaussian data N(mu, diag(s^2)) the sigma-space ODE dx/dsigma = (x - D(x, sigma)) / sigma has
D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu) and the closed-form solution
x(sigma) = mu + sqrt((s^2 + sigma^2) / (s^2 + sigma_T^2)) (x_T - mu).

Observed order = log2(err(N=32) / err(N=64)) over N = 8, 16, 32, 64 (errors must also fall
monotonically).  The theory accounts for how multistep methods start: the first step is
first order (UniPC: first order plus its corrector), so its local error O(h^2) (UniPC: O(h^3))
caps the global order of DPM-Solver++(3M), DEIS-3/4 at 2 and of UniPC-3 at 3; iPNDM's fixed
equal-step weights cap it at 2 on non-uniform grids.  The sigma range [0.5, 2] keeps N = 8..64
in the asymptotic regime.  test_full_order_with_graded_start shows the formulas themselves
reach their full order once the warm-up steps are made small enough.
"""
import math

import pytest
import torch

from ld3_cli.schedules import EDM, discretize
from ld3_cli.solvers import solve

D_DIM = 8
MU = torch.randn(D_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
S = torch.linspace(0.5, 1.5, D_DIM, dtype=torch.float64)
S_MIN, S_MAX = 0.5, 2.0
NS = (8, 16, 32, 64)


def gaussian_denoiser(x, sigma, cond=None):
    sig = sigma.view(-1, 1).to(torch.float64)
    return MU + S ** 2 / (S ** 2 + sig ** 2) * (x - MU)


def exact_solution(x_T, s_from, s_to):
    return MU + torch.sqrt((S ** 2 + s_to ** 2) / (S ** 2 + s_from ** 2)) * (x_T - MU)


X_T = MU + S_MAX * torch.randn(4, D_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
EXACT = exact_solution(X_T, S_MAX, S_MIN)

# (solver, options, theoretical global order on smooth grids with the standard warm-up)
CASES = [
    ("euler", {}, 1),
    ("heun", {}, 2),
    ("dpmpp", {"order": 1}, 1),
    ("dpmpp", {"order": 2}, 2),
    ("dpmpp", {"order": 2, "solver_type": "heun"}, 2),
    ("dpmpp", {"order": 3}, 2),
    ("dpmpp", {"order": 3, "coefficients": "exact"}, 2),
    ("unipc", {"order": 1, "variant": "bh1"}, 2),
    ("unipc", {"order": 2, "variant": "bh1"}, 3),
    ("unipc", {"order": 3, "variant": "bh1"}, 3),
    ("unipc", {"order": 1, "variant": "bh2"}, 2),
    ("unipc", {"order": 2, "variant": "bh2"}, 3),
    ("unipc", {"order": 3, "variant": "bh2"}, 3),
    ("ipndm", {"order": 1}, 1),
    ("ipndm", {"order": 2}, 2),
    ("ipndm", {"order": 3}, 2),
    ("ipndm", {"order": 4}, 2),
    ("deis", {"order": 1}, 1),
    ("deis", {"order": 2}, 2),
    ("deis", {"order": 3}, 2),
    ("deis", {"order": 4}, 2),
]


def _run(name, options, sigmas):
    kw = dict(options)
    if name in ("dpmpp", "unipc"):
        kw["lower_order_final"] = False
    return solve(name, gaussian_denoiser, X_T.clone(), sigmas, **kw)


def observed_order(errs):
    assert all(a > b for a, b in zip(errs, errs[1:])), f"errors do not decrease: {errs}"
    return math.log2(errs[-2] / errs[-1])


@pytest.mark.parametrize("grid", ["edm", "logsnr"])
@pytest.mark.parametrize("name,options,order", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_global_order(grid, name, options, order):
    sched = EDM(S_MIN, S_MAX)
    errs = [float((_run(name, options, discretize(grid, n, sched)) - EXACT).norm()) for n in NS]
    assert abs(observed_order(errs) - order) <= 0.3, (errs, observed_order(errs))


def graded_grid(n, p, local_exponents):
    """log-SNR grid whose warm-up step i has size h^(p / q_i) (q_i: its local error exponent)."""
    l0, l1 = -math.log(S_MAX), -math.log(S_MIN)
    h = (l1 - l0) / n
    lam = [l0]
    for q in local_exponents:
        lam.append(lam[-1] + h ** (p / q))
    tail = torch.linspace(lam[-1], l1, n - len(local_exponents) + 1, dtype=torch.float64)[1:]
    return torch.exp(-torch.cat([torch.tensor(lam, dtype=torch.float64), tail]))


@pytest.mark.parametrize("name,options,order,warmup", [
    ("dpmpp", {"order": 3, "coefficients": "exact"}, 3, [2, 3]),
    ("dpmpp", {"order": 3, "coefficients": "reference"}, 2, [2, 3]),  # half the Taylor weight: order 2
    ("unipc", {"order": 3, "variant": "bh2"}, 4, [3, 4]),
    ("unipc", {"order": 3, "variant": "bh1"}, 4, [3, 4]),
    ("deis", {"order": 3}, 3, [2, 3]),
    ("deis", {"order": 4}, 4, [2, 3, 4]),
])
def test_full_order_with_graded_start(name, options, order, warmup):
    errs = [float((_run(name, options, graded_grid(n, order, warmup)) - EXACT).norm()) for n in NS]
    assert abs(observed_order(errs) - order) <= 0.3, (errs, observed_order(errs))


def test_third_order_step_is_exact_for_quadratic_x0_only_with_exact_weights():
    """A 3M step integrates x0(lambda) = a + b u + c u^2 exactly (exact weights); 'reference' misses c's half.

    With a denoiser that ignores x, the history D_i is exact, so the increment of the third step,
    x3 - e^{-h} x2, must equal  int_0^h e^{u-h} (a + b u + c u^2) du
    = a (1 - e^{-h}) + b (h - 1 + e^{-h}) + c (h^2 - 2h + 2 - 2 e^{-h}).
    """
    lam = torch.tensor([-0.9, -0.5, -0.2, 0.25], dtype=torch.float64)  # uneven log-SNR steps
    a, b, c = 0.7, -1.3, 0.9

    def x0(lmb):
        u = lmb - lam[2]
        return a + b * u + c * u * u

    def den(x, sigma, cond=None):
        return x0(-torch.log(sigma.to(torch.float64))).view(-1, 1).expand_as(x)

    sig = torch.exp(-lam)
    x_start = torch.full((1, 1), 0.4, dtype=torch.float64)
    h = float(lam[3] - lam[2])
    e = math.exp(-h)
    integral = a * (1 - e) + b * (h - 1 + e) + c * (h * h - 2 * h + 2 - 2 * e)
    taylor_c = c * (h * h - 2 * h + 2 - 2 * e)  # the part carried by the second derivative
    for coefficients, expected in (("exact", integral), ("reference", integral - 0.5 * taylor_c)):
        kw = dict(coefficients=coefficients, lower_order_final=False)
        x2 = solve("dpmpp", den, x_start, sig[:3], order=2, **kw)  # the same two warm-up steps (orders 1, 2)
        x3 = solve("dpmpp", den, x_start, sig, order=3, **kw)
        increment = float(x3 - e * x2)
        assert increment == pytest.approx(expected, abs=1e-12), coefficients
