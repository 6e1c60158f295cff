"""LD3's schedule parameterization, soft teacher forcing geometry and the optimisers."""
import math

import pytest
import torch

from ld3_cli.ld3.optim import SGD, Adam, RMSpropMomentum
from ld3_cli.ld3.parameterization import ScheduleParameterization
from ld3_cli.ld3.soft_teacher import accept_moves, default_radius, project_to_ball
from ld3_cli.schedules import EDM, FlowMatching, VPCosine, VPDiscrete, VPLinear, discretize


@pytest.mark.parametrize("sched", [EDM(), VPLinear(), VPDiscrete.linear(1000)], ids=lambda s: s.kind)
@pytest.mark.parametrize("space", ["lambda", "time"])
@pytest.mark.parametrize("kind", ["logsnr", "edm", "time_uniform", "time_quadratic"])
def test_initialisation_reproduces_the_baseline_exactly(sched, space, kind):
    base = discretize(kind, 6, sched)
    p = ScheduleParameterization(sched, base, space)
    sig, ev = p()
    assert torch.allclose(sig, base, rtol=1e-10, atol=0)
    assert torch.equal(sig, ev)  # zero offsets: evaluation times equal the steps


@pytest.mark.parametrize("space", ["lambda", "time"])
def test_any_logits_give_a_monotone_grid_with_fixed_endpoints(space):
    sched = VPLinear()
    p = ScheduleParameterization(sched, discretize("logsnr", 7, sched), space)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        with torch.no_grad():
            p.logits.copy_(3 * torch.randn(7, generator=g, dtype=torch.float64))
        sig = p(decoupled=False)[0].detach()
        assert bool(torch.all(sig[1:] < sig[:-1]))
        assert float(sig[0]) == sched.sigma_max and float(sig[-1]) == sched.sigma_min


@pytest.mark.parametrize("units", ["window", "official"])
def test_decoupled_offsets_are_clamped_to_win_rate_times_the_smallest_gap(units):
    sched = EDM()
    p = ScheduleParameterization(sched, discretize("edm", 5, sched), "lambda", win_rate=0.5, offset_units=units)
    with torch.no_grad():
        p.offsets.copy_(torch.tensor([9.0, 9.0, -9.0, 0.01, 9.0, 9.0], dtype=torch.float64))
    with torch.no_grad():
        sig, ev = p()
    lam, lam_ev = -torch.log(sig), -torch.log(ev)
    gap = float((lam[1:] - lam[:-1]).min())
    shift = lam_ev - lam
    assert float(shift[0]) == 0 and float(shift[-1]) == 0  # endpoints fixed
    small = 0.01 * 0.5 * gap if units == "window" else 0.01  # a fraction of the window, or log-SNR units
    assert shift[1:4].tolist() == pytest.approx([0.5 * gap, -0.5 * gap, small], rel=1e-9)
    assert p.window_fractions().tolist() == pytest.approx([1.0, 1.0, small / (0.5 * gap), 1.0], rel=1e-9)


@pytest.mark.parametrize("space", ["lambda", "time"])
def test_decouple_first_moves_the_first_evaluation_towards_the_grid_within_the_same_bound(space):
    """With ``decouple_first`` the evaluation at sigma_max moves like the inner ones but only towards the grid (never
    above sigma_max); the noise is still drawn at sigma_max (the grid keeps its ends); a zero offset is exactly
    sigma_max; without the option the same offset does nothing there."""
    sched = EDM()
    base = discretize("edm", 5, sched)
    fixed = ScheduleParameterization(sched, base, space)
    zero = ScheduleParameterization(sched, base, space, decouple_first=True)
    assert float(zero()[1][0]) == sched.sigma_max and torch.equal(zero()[1], fixed()[1])
    moved_by = {}
    for sign in (1.0, -1.0):
        p = ScheduleParameterization(sched, base, space, decouple_first=True)
        with torch.no_grad():
            p.offsets.copy_(torch.tensor([9.0 * sign, 0.0, 0.0, 0.0, 0.0, 9.0], dtype=torch.float64))
            fixed.offsets.copy_(p.offsets)
        sig, ev = p()
        assert float(sig[0]) == sched.sigma_max and float(ev[-1]) == sched.sigma_min
        assert float(ev[0]) <= sched.sigma_max and torch.equal(ev[1:-1], sig[1:-1])
        assert float(fixed()[1][0]) == sched.sigma_max
        u, u_ev = p.to_space(sig), p.to_space(ev)
        moved_by[sign] = (float((u_ev[0] - u[0]).abs()), float(0.5 * (u[1:] - u[:-1]).abs().min()),
                          p.window_fractions().tolist())
    (inward, bound, fractions), (outward, _, still) = sorted(moved_by.values(), reverse=True)
    assert inward == pytest.approx(bound, rel=1e-9) and outward == 0.0  # one direction to the bound, the other none
    assert fractions == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.0]) and still == [0.0] * 5
    assert len(fixed.window_fractions()) == 4
    # the first offset's gradient reaches the evaluation time
    ev0 = ScheduleParameterization(sched, base, space, decouple_first=True)
    ev0()[1][0].backward()
    assert float(ev0.offsets.grad[0].abs()) > 0


@pytest.mark.parametrize("sched", [FlowMatching(), VPCosine(), VPDiscrete.linear(1000), EDM()], ids=lambda s: s.kind)
@pytest.mark.parametrize("space", ["lambda", "time"])
@pytest.mark.parametrize("kind", ["time_uniform", "time_quadratic", "logsnr"])
def test_the_first_evaluation_stays_inside_the_models_range_for_any_offset(sched, space, kind):
    """Whatever the first offset, its evaluation noise level is positive and at most sigma_max (a flow model's time
    above 1, a cosine schedule's beyond its end, would give a negative or undefined sigma)."""
    p = ScheduleParameterization(sched, discretize(kind, 6, sched), space, win_rate=1.0, decouple_first=True)
    for first in (-50.0, -1.0, 1.0, 50.0):
        with torch.no_grad():
            p.offsets.zero_()
            p.offsets[0] = first
            ev = p()[1]
        assert 0 < float(ev[0]) <= sched.sigma_max * (1 + 1e-12), (first, float(ev[0]))


@pytest.mark.parametrize("space", ["lambda", "time"])
def test_window_offsets_mean_the_same_on_every_schedule(space):
    """A window-unit offset moves a point by the same fraction of its window whatever the native time's scale;
    official units are the official code's (log-SNR, or time normalised to (0, 1]: one DDPM step = 1/1000)."""
    fracs = []
    for sched in (VPDiscrete.linear(1000), VPLinear()):
        p = ScheduleParameterization(sched, discretize("time_uniform", 5, sched), space)
        with torch.no_grad():
            p.offsets.fill_(0.3)
        fracs.append(p.window_fractions())
    assert torch.allclose(fracs[0], torch.full((4,), 0.3, dtype=torch.float64))
    assert torch.allclose(fracs[0], fracs[1])
    sched = VPDiscrete.linear(1000)
    p = ScheduleParameterization(sched, discretize("time_uniform", 5, sched), "time", offset_units="official")
    with torch.no_grad():
        p.offsets.fill_(0.002)  # two training steps in normalised time
    sig, ev = p()
    assert (sched.t(ev) - sched.t(sig))[1:-1].tolist() == pytest.approx([2.0] * 4, rel=1e-9)


@pytest.mark.parametrize("mode", ["model", "vp", "none"])
def test_eval_scales_are_the_alpha_ratio_of_step_and_evaluation_noise(mode):
    vp, edm = VPDiscrete.linear(1000), EDM()
    sig = torch.tensor([80.0, 5.0, 0.5, 0.01], dtype=torch.float64)
    ev = torch.tensor([80.0, 4.0, 0.6, 0.01], dtype=torch.float64)
    for sched in (vp, edm):
        p = ScheduleParameterization(sched, sig, "lambda", eval_scale=mode)
        c = p.eval_scales(sig, ev)
        if mode == "none":
            assert c is None
            continue
        vp_ratio = torch.sqrt((1 + ev ** 2) / (1 + sig ** 2))
        want = torch.ones(4, dtype=torch.float64) if (mode == "model" and sched is edm) else vp_ratio
        assert torch.allclose(c, want, rtol=1e-12)
        assert float(c[0]) == 1.0 and float(c[-1]) == 1.0  # equal noise levels: no rescaling


def test_gradients_reach_logits_and_offsets():
    sched = EDM()
    p = ScheduleParameterization(sched, discretize("logsnr", 4, sched))
    sig, ev = p()
    (sig.sum() + (ev * torch.arange(5.0, dtype=torch.float64)).sum()).backward()
    assert p.logits.grad is not None and float(p.logits.grad.abs().sum()) > 0
    assert p.offsets.grad is not None and float(p.offsets.grad[1:-1].abs().sum()) > 0


def test_ball_projection_and_acceptance():
    center = torch.zeros(4, 3, 2)
    scale = torch.tensor([0.01, 1, 5, 0.2]).view(4, 1, 1)
    cand = torch.randn(4, 3, 2, generator=torch.Generator().manual_seed(1)) * scale
    out = project_to_ball(cand, center, radius=0.5)
    norms = out.flatten(1).norm(dim=1)
    assert bool(torch.all(norms <= 0.5 + 1e-6))
    inside = cand.flatten(1).norm(dim=1) <= 0.5
    assert torch.equal(out[inside], cand[inside])  # points inside the ball do not move
    # outside points go to the closest point of the sphere: same direction
    cos = torch.nn.functional.cosine_similarity(out.flatten(1), cand.flatten(1))
    assert torch.allclose(cos, torch.ones(4), atol=1e-6)
    cur = torch.zeros(3, 2)
    upd, mask = accept_moves(cur, torch.ones(3, 2), torch.tensor([1.0, 3.0, 2.0]), torch.tensor([2.0, 2.0, 2.0]))
    assert mask.tolist() == [True, False, False] and upd[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert default_radius(0.001, 3 * 32 * 32, 10) == pytest.approx(0.03072)


def test_optimisers_follow_torch_update_rules():
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(6)]
    for ours_cls, theirs in ((lambda p: RMSpropMomentum(p, lr=5e-3, momentum=0.9),
                              lambda p: torch.optim.RMSprop([p], lr=5e-3, momentum=0.9)),
                             (lambda p: Adam(p, lr=1e-2), lambda p: torch.optim.Adam([p], lr=1e-2)),
                             (lambda p: SGD(p, lr=0.1), lambda p: torch.optim.SGD([p], lr=0.1))):
        a = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        oa, ob = ours_cls(a), theirs(b)
        for gr in grads:
            a.grad, b.grad = gr.clone(), gr.clone()
            oa.step()
            ob.step()
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)
    assert math.isfinite(float(a.detach().sum()))


@pytest.mark.parametrize("make", [lambda p: RMSpropMomentum(p, lr=5e-3, momentum=0.9, decay=0.1),
                                  lambda p: Adam(p, lr=1e-2, decay=0.1)])
def test_decoupled_decay(make):
    """``decay`` shrinks the parameter by that fraction after each update: with zero gradients p_k = 0.9^k p_0;
    with gradients it is the plain update followed by the shrink."""
    p = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = make(p)
    for _ in range(5):
        p.grad = torch.zeros_like(p)
        opt.step()
    assert torch.allclose(p.detach(), torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * 0.9 ** 5, rtol=1e-14)
    p, q = (torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True) for _ in range(2))
    opt, plain = make(p), make(q)
    plain.decay = 0.0
    g = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    plain.step()
    assert torch.allclose(p.detach(), 0.9 * q.detach(), rtol=1e-14)
