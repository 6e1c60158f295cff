"""SpeedWrapper: same outputs as the plain denoiser (layout exact, bf16 close), same Denoiser interface."""
from __future__ import annotations

import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.ld3.trainer import learn_schedule
from ld3_cli.models.speed import SpeedWrapper, optimize_denoiser
from ld3_cli.solvers import solve

from perf_testlib import tiny_edm, tiny_gmm

SIGMAS = torch.tensor([0.002, 0.3, 2.0, 80.0])


def _probe(shape, seed=3):
    noise = torch.randn(len(SIGMAS), *shape, generator=torch.Generator().manual_seed(seed))
    return noise * (1 + SIGMAS.view(-1, 1, 1, 1))


def test_no_option_returns_the_model_itself():
    m = tiny_gmm()
    assert optimize_denoiser(m) is m
    assert isinstance(optimize_denoiser(m, channels_last=True), SpeedWrapper)


def test_channels_last_is_exact_for_the_mixture():
    m = tiny_gmm()
    x = _probe(m.shape)
    ref = m(x, SIGMAS)
    out = optimize_denoiser(m, channels_last=True)(x, SIGMAS)
    assert torch.equal(out, ref)


def test_channels_last_edm_same_values_and_layout():
    m = tiny_edm()
    x = _probe(m.shape)
    ref = m(x, SIGMAS)
    w = optimize_denoiser(m, channels_last=True)
    # the 4-D weights are now stored NHWC (converted in place on the shared module)
    convs = [p for p in m.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    out = w(x, SIGMAS)
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    # same maths in another memory order: equal up to float32 summation-order rounding
    net_term = (ref - x).abs().max()
    assert net_term > 1e-2  # the network contributes (weights are not the near-zero EDM init)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * float(net_term))


def test_bf16_autocast_close_but_not_identical():
    m = tiny_edm()
    x = _probe(m.shape)
    ref = m(x, SIGMAS)
    out = optimize_denoiser(m, autocast="bf16")(x, SIGMAS)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # relative error of the network term c_out * F: bf16 has an 8-bit mantissa (~4e-3 per rounding)
    rel = float((out - ref).norm() / (ref - x).norm())
    assert 0 < rel < 0.05


def test_bf16_output_keeps_the_state_dtype():
    m = tiny_edm()
    x = _probe(m.shape).double()
    out = optimize_denoiser(m, autocast="bf16")(x, SIGMAS)
    assert out.dtype == torch.float64


def test_interface_forwarded():
    m = tiny_gmm(conditional=True)
    w = optimize_denoiser(m, channels_last=True, autocast="bf16")
    assert w.schedule is m.schedule and w.shape == m.shape and w.image_shape == m.image_shape
    assert w.condition == m.condition and w.name == m.name
    seeds = torch.arange(7)
    assert torch.equal(w.draw_conditions(seeds), m.draw_conditions(seeds))
    x = torch.randn(2, *m.shape)
    assert torch.equal(w.decode(x), m.decode(x))
    assert w.describe()["speed"] == {"channels_last": True, "compile": False, "compile_mode": None,
                                     "autocast": "bfloat16"}
    assert w.device == m.device and w.dtype == m.dtype


def test_bad_autocast_is_a_config_error():
    with pytest.raises(ConfigError, match="autocast"):
        optimize_denoiser(tiny_gmm(), autocast="int8")


def test_solver_and_trainer_see_no_difference_with_channels_last():
    """A learned schedule through the wrapper equals the one through the plain mixture (exact layout change)."""
    m = tiny_gmm()
    g = torch.Generator().manual_seed(5)
    noises = torch.randn(6, *m.shape, generator=g)
    sig = torch.tensor([80.0, 5.0, 0.5, 0.05, 0.002], dtype=torch.float64)
    with torch.no_grad():
        targets = solve("unipc", m, noises * 80.0, sig, order=3)
    kw = dict(solver="unipc", nfe=3, noises=noises, targets=targets, schedule="logsnr", batch_size=3,
              iters_phase1=2, iters_phase2=2)
    a = learn_schedule(m, **kw)
    b = learn_schedule(optimize_denoiser(m, channels_last=True), **kw)
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.sigmas_eval, b.sigmas_eval)
    assert a.best_val == b.best_val and a.iterations == b.iterations == 4


@pytest.mark.slow
def test_compiled_matches_plain():
    """torch.compile (inductor, needs a C++ compiler on CPU) gives the plain outputs to float32 rounding."""
    m = tiny_edm()
    x = _probe(m.shape)
    ref = m(x, SIGMAS)
    out = optimize_denoiser(m, compile=True)(x, SIGMAS)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * float((ref - x).abs().max()))
