"""The stock-sampler solvers (k_euler, k_dpmpp_2m, k_heun) equal k-diffusion's own sample_euler, sample_dpmpp_2m and
sample_heun on the list ending at 0 (the real k-diffusion, where `make install` put it), and the ld3 `edm` baseline of a
stock solver is k-diffusion's Karras list for the same NFE."""
from __future__ import annotations

import pytest
import torch
from ld3_test_helpers import CountingDenoiser, kdiffusion

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import discretize
from ld3_cli.schedules.noise import EDM, VPDiscrete
from ld3_cli.solvers import get_solver, solve

STOCK = [("k_euler", "sample_euler", 5), ("k_dpmpp_2m", "sample_dpmpp_2m", 5), ("k_heun", "sample_heun", 7)]


@pytest.mark.parametrize("solver,function,nfe", STOCK)
@pytest.mark.parametrize("schedule", [EDM(), VPDiscrete.linear()], ids=["edm", "vp"])
def test_stock_solvers_equal_kdiffusion_on_the_list_ending_at_zero(solver, function, nfe, schedule):
    sampling, _ = kdiffusion()
    net = CountingDenoiser()
    steps = get_solver(solver).steps_for_nfe(nfe)
    sig = discretize("edm" if schedule.kind == "edm" else "time_uniform", steps, schedule)
    stock = torch.cat([sig, sig.new_zeros(1)])
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=dtype) * float(sig[0])
        net.calls = 0
        ours = solve(solver, net, x, sig)
        assert net.calls == nfe
        net.calls = 0
        theirs = getattr(sampling, function)(lambda z, s: net(z, s), x, stock.to(dtype), disable=True)
        assert net.calls == nfe
        scale = float(theirs.abs().max())
        assert float((ours - theirs).abs().max()) <= tol * scale, (solver, dtype)
    # the ld3 `edm` baseline of a stock solver is k-diffusion's Karras list for the same NFE
    if schedule.kind == "edm":
        karras = sampling.get_sigmas_karras(steps + 1, schedule.sigma_min, schedule.sigma_max).double()
        torch.testing.assert_close(stock, karras, rtol=1e-6, atol=0)


def test_stock_solver_nfe_rules():
    assert get_solver("k_dpmpp_2m").steps_for_nfe(5) == 4 and get_solver("k_dpmpp_2m").nfe(4) == 5
    assert get_solver("k_heun").steps_for_nfe(7) == 3 and get_solver("k_heun").nfe(3) == 7
    with pytest.raises(ConfigError, match="odd NFE >= 3"):
        get_solver("k_heun").steps_for_nfe(6)
    with pytest.raises(ConfigError, match="nfe >= 2"):
        get_solver("k_euler").steps_for_nfe(1)
