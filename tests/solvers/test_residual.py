"""The learned residual operator on a multistep table: the table at initialisation, gradients, round trip."""
import json

import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.solvers import get_solver
from ld3_cli.solvers.multistep import sample_multistep
from ld3_cli.solvers.residual import PARTS, ResidualOperator
from ld3_cli.solvers.sampler import Sampler
from ld3_cli.solvers.stock import k_dpmpp_2m_coefficients
from tests.ld3.test_learned_coefficients import CASES, Mixture, grids, start


def _operator(table, seed=0, width=4, first=0) -> ResidualOperator:
    """An operator for ``table`` on the mixture's ``[B, 1, 2, 3]`` states, its last layers drawn too (seed ``seed``)."""
    op = ResidualOperator(table.steps, 1, table.history, width, torch.Generator().manual_seed(seed), first).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for i in op.covered():
            for name in ("w3", "b3"):
                op.part(i, name).copy_(0.1 * torch.randn(op.part(i, name).shape, generator=g))
    return op


@pytest.mark.parametrize("name,opts", CASES, ids=lambda v: str(v))
def test_a_fresh_operator_is_exactly_the_table(name, opts):
    """Its last layers start at zero: the run equals the table's bit for bit (decoupled grid, state scales)."""
    sig, ev, scales = grids(5)
    table = get_solver(name).coefficients(sig, **opts)
    op = ResidualOperator(table.steps, 1, table.history, 8, torch.Generator().manual_seed(3)).double()
    assert op.magnitude() == 0.0 and float(op.part(0, "w1").detach().abs().max()) > 0
    want = sample_multistep(Mixture(), start(), sig, table, ev, eval_scales=scales)
    got = sample_multistep(Mixture(), start(), sig, table, ev, eval_scales=scales, residual=op)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name,opts", [("ipndm", {"order": 3}), ("unipc", {"order": 3, "variant": "bh2"}),
                                       ("dpmpp", {"order": 2})])
def test_gradients_reach_every_weight_and_the_residual_moves_the_result(name, opts):
    sig, ev, scales = grids(5)
    table = get_solver(name).coefficients(sig, **opts)
    op = _operator(table)
    base = sample_multistep(Mixture(), start(), sig, table, ev, eval_scales=scales)
    out = sample_multistep(Mixture(), start(), sig, table, ev, eval_scales=scales, residual=op)
    assert float((out - base).abs().max()) > 1e-3
    (out ** 2).sum().backward()
    for i in range(table.steps):
        for part in PARTS:
            assert float(op.part(i, part).grad.abs().max()) > 0, (i, part)


def test_the_residual_is_step_sized_and_sees_the_buffers():
    """``r_i = (sigma_i - sigma_{i+1}) R_i(features)``: zero for a zero-length step, and it changes with each of the
    state and the buffered outputs."""
    sig, _, _ = grids(4)
    op = _operator(get_solver("ipndm").coefficients(sig, order=3))
    x = start(2) / 20
    hist = [torch.full_like(x, 0.3), torch.full_like(x, -0.2)]
    r = op.step(1, x, hist, sig[1], sig[2])
    assert torch.equal(op.step(1, x, hist, sig[1], sig[1]), torch.zeros_like(x))
    assert torch.allclose(op.step(1, x, hist, sig[1], sig[1] - 2 * (sig[1] - sig[2])), 2 * r, rtol=1e-12)
    for changed in ([hist[0] + 0.1, hist[1]], [hist[0], hist[1] + 0.1]):
        assert not torch.allclose(op.step(1, x, changed, sig[1], sig[2]), r)
    assert not torch.allclose(op.step(1, x + 0.1 * sig[1], hist, sig[1], sig[2]), r)


def test_a_sampler_with_a_residual_round_trips_and_needs_a_table():
    sig, ev, scales = grids(5)
    table = get_solver("unipc").coefficients(sig, order=3)
    s = Sampler("unipc", sig, {"order": 3}, ev, scales, "step", table, _operator(table, seed=5))
    back = Sampler.from_tensors(s.tensors(), json.loads(json.dumps(s.plain())))
    assert back.plain()["residual"] == {"steps": 5, "channels": 1, "history": 3, "width": 4, "first": 0}
    assert torch.equal(back.solve(Mixture(), start()), s.solve(Mixture(), start()))
    assert torch.equal(s.detached().solve(Mixture(), start()), s.solve(Mixture(), start()))
    with pytest.raises(ConfigError, match="coefficient table"):
        Sampler("unipc", sig, {"order": 3}, residual=_operator(table))
    tensors = s.tensors()
    tensors.pop("residual.4.w2")
    with pytest.raises(ConfigError, match="residual.4.w2"):
        Sampler.from_tensors(tensors, s.plain())


def test_an_operator_from_step_first_leaves_the_steps_before_it_alone():
    """``first = 3``: the states up to grid point 3 are the table's bit for bit, the later ones differ; only steps 3
    and 4 have weights, and the operator round-trips through the sampler's tensors."""
    sig, ev, scales = grids(5)
    table = get_solver("ipndm").coefficients(sig, order=3)
    op = _operator(table, first=3)
    assert list(op.covered()) == [3, 4] and len(op.weights) == 2 * len(PARTS)
    states: dict = {}
    for key, residual in (("table", None), ("residual", op)):
        sample_multistep(Mixture(), start(), sig, table, ev, eval_scales=scales, residual=residual,
                         callback=lambda i, x, d, k=key: states.setdefault((k, i), x.clone()))
    assert all(torch.equal(states["table", i], states["residual", i]) for i in range(4))
    assert not torch.equal(states["table", 4], states["residual", 4])
    s = Sampler("ipndm", sig, {"order": 3}, ev, scales, "step", table, op)
    back = Sampler.from_tensors(s.tensors(), json.loads(json.dumps(s.plain())))
    assert back.residual.first == 3 and torch.equal(back.solve(Mixture(), start()), s.solve(Mixture(), start()))


def test_a_table_onto_zero_gives_its_last_step_the_residual_too():
    """k-diffusion's tables end with a step onto 0: the residual of that step is ``sigma_N * R_N`` (not zero)."""
    sig, _, _ = grids(4)
    table = k_dpmpp_2m_coefficients(sig)
    assert table.to_zero
    op = _operator(table, first=table.steps - 1)
    want = sample_multistep(Mixture(), start(), sig, table)
    got = sample_multistep(Mixture(), start(), sig, table, residual=op)
    assert not torch.equal(got, want)


def test_bad_sizes_are_refused():
    with pytest.raises(ConfigError, match="width"):
        ResidualOperator(3, 1, 2, 0)
    with pytest.raises(ConfigError, match="first"):
        ResidualOperator(3, 1, 2, 4, first=3)
