"""UniPC's ``rho`` in the gradient (``train.rho_gradient``): ``stopped`` keeps every value and differentiates as if
``rho`` were constant in the step-size ratios (the official LD3 code's UniPC); ``full`` is the exact gradient."""
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import EDM, discretize
from ld3_cli.solvers import solve
from ld3_cli.solvers.unipc import _unipc_coefficients, rho_gradient, unipc_coefficients

SIGMAS = discretize("edm", 5, EDM()).to(torch.float64)


def _table(sigmas, mode, order=3):
    with rho_gradient(mode):
        return unipc_coefficients(sigmas, order, "bh2", True, True)


def _pred_weight(sigmas, i, k, rho_at=None):
    """Predictor weight of ``D_{i-k} - D_i`` at step ``i``, ``-B(h) rho_k / r_k``, written out; ``rho`` from the
    ratios of ``rho_at`` when given (held fixed), else from ``sigmas``."""
    lam = -torch.log(sigmas)
    h = lam[i + 1] - lam[i]
    r = (lam[i - k] - lam[i]) / h
    ref = sigmas if rho_at is None else rho_at
    lr = -torch.log(ref)
    hr = lr[i + 1] - lr[i]
    rks = [(lr[i - j] - lr[i]) / hr for j in (1, 2)] + [torch.ones_like(hr)]
    _, _, rhos_p, _ = _unipc_coefficients(h, rks, "bh2")
    return -torch.expm1(-h) * rhos_p[k - 1] / r


def test_values_are_the_same_in_both_modes():
    full, stopped = _table(SIGMAS, "full"), _table(SIGMAS, "stopped")
    for a, b in zip(full.pred, stopped.pred):
        assert torch.equal(a, b)
    for a, b in zip(full.corr, stopped.corr):
        assert torch.equal(a, b)
    assert torch.equal(full.a, stopped.a) and torch.equal(full.b, stopped.b)


def test_stopped_gradient_is_that_of_rho_held_constant():
    """At the order-3 step the predictor weight's gradient is, with ``stopped``, the derivative (central
    differences) of the same weight with ``rho`` frozen at the base grid; with ``full``, that of the weight itself."""
    i, k = 2, 1  # step 2 of 5 runs order 3 (lower_order_final lowers steps 3 and 4)
    sig = SIGMAS.clone().requires_grad_(True)
    w_table = _table(sig, "stopped").pred[i][k - 1]
    (g_stopped,) = torch.autograd.grad(w_table, sig)
    sig2 = SIGMAS.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(_table(sig2, "full").pred[i][k - 1], sig2)
    assert torch.allclose(w_table.detach(), _pred_weight(SIGMAS, i, k))
    eps = 1e-6
    for j in range(1, SIGMAS.numel() - 1):
        d = torch.zeros_like(SIGMAS)
        d[j] = eps * SIGMAS[j]
        frozen = (_pred_weight(SIGMAS + d, i, k, SIGMAS) - _pred_weight(SIGMAS - d, i, k, SIGMAS)) / (2 * d[j])
        exact = (_pred_weight(SIGMAS + d, i, k) - _pred_weight(SIGMAS - d, i, k)) / (2 * d[j])
        assert float(g_stopped[j]) == pytest.approx(float(frozen), rel=1e-5, abs=1e-9)
        assert float(g_full[j]) == pytest.approx(float(exact), rel=1e-5, abs=1e-9)
    assert not torch.allclose(g_stopped, g_full)  # the rho path is not zero at order 3


def test_the_mode_changes_only_unipc_orders_that_solve_for_rho():
    """Order 1 has no ratios: both modes give the same gradient through a whole solve."""
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80

    def den(z, s, cond=None):
        return torch.tanh(z / (1 + s.view(-1, 1, 1, 1)))

    grads = {}
    for mode in ("full", "stopped"):
        sig = SIGMAS.clone().requires_grad_(True)
        with rho_gradient(mode):
            out = solve("unipc", den, x, sig, order=1)
        (grads[mode],) = torch.autograd.grad(out.square().sum(), sig)
    assert torch.equal(grads["full"], grads["stopped"])


def test_mode_is_restored_and_checked():
    with pytest.raises(ConfigError, match="full"):
        with rho_gradient("detached"):
            pass
    with pytest.raises(RuntimeError):
        with rho_gradient("stopped"):
            raise RuntimeError("inside")
    sig = SIGMAS.clone().requires_grad_(True)
    (g_after,) = torch.autograd.grad(unipc_coefficients(sig, 3, "bh2", True, True).pred[2][0], sig)
    sig2 = SIGMAS.clone().requires_grad_(True)
    (g_full,) = torch.autograd.grad(_table(sig2, "full").pred[2][0], sig2)
    assert torch.equal(g_after, g_full)  # outside any block the gradient is the exact one
