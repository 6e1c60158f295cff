"""ld3's sigma-space solvers reproduce the diffusers schedulers on identical time grids.

What is compared
----------------
Both sides call one analytic model: the exact posterior mean ``D(x, sigma)`` of an isotropic
3-component Gaussian mixture in 6-d (non-linear in ``x``), in float64.  diffusers' VP-space
schedulers (DDIM, DPM-Solver++, UniPC) carry ``x_t = alpha_t x0 + s_t n`` with
``alpha_t = 1 / sqrt(1 + sigma^2)`` and ``s_t = sigma alpha_t``; their model sees ``x_t`` and
returns ``eps = (x - D(x, sigma)) / sigma`` or ``x0 = D(x, sigma)`` with ``x = x_t / alpha_t``.
The Karras-style schedulers (Euler, Heun) carry ``x`` itself and scale the model input by
``1 / sqrt(1 + sigma^2)``, which the model undoes.  The exponential integrators are invariant
under ``x = x_t / alpha_t``, so after dividing diffusers' final state by ``alpha`` of the last
level it must equal ``solve(...)`` on the scheduler's own sigma grid (``scheduler.sigmas``).
Every denoiser call is logged on both sides, so the test also compares the sequence of
``(state, sigma)`` pairs where the model was evaluated: for the multistep solvers these are the
states after every step (for UniPC the predictor states, which is where the model is
evaluated before the corrector is applied), for Heun also the Euler predictor points.

Facts about diffusers 0.42.1 that fix the setup (read in its ``schedulers/`` sources)
---------------------------------------------------------------------------------------
* Grids.  ``set_timesteps(N)`` picks integer timesteps (``timestep_spacing``), interpolates
  ``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` at them and appends a final level:
  ``final_sigmas_type="zero"`` (the default of DPM-Solver++, UniPC, Euler) appends 0,
  ``"sigma_min"`` appends the level of training step 0.  Heun always appends 0; DDIM ends at
  ``alphas_cumprod = 1`` (sigma 0) unless ``set_alpha_to_one=False``.  ld3 needs positive
  levels, so the multistep schedulers run with ``"sigma_min"`` (``linspace`` spacing keeps the
  last timestep > 0, so the grid is strictly decreasing).  A final level of 0 is the limit
  ``sigma_N -> 0`` of ld3's grid: the last step is then a first-order step that returns
  ``D(x_{N-1}, sigma_{N-1})`` exactly; ld3 reproduces it on the grid whose last level is
  ``1e-12 sigma_{N-1}`` (tested for Euler, DDIM, Heun, DPM-Solver++, UniPC).
* float32.  The grids are stored as float32 (``astype(np.float32)``; betas and
  ``alphas_cumprod`` are float32).  ld3 takes those float32 values exactly (as float64), so the
  grids are identical.  ``DPMSolverMultistepScheduler.step`` and
  ``EulerDiscreteScheduler.step`` cast the sample to float32 before the update; there the
  comparison is at float32 round-off, ``RTOL32 = 1e-5`` relative to ``max(1, max|x|)``
  (measured: at most 2.1e-6).  Heun, UniPC and DDIM keep the sample's dtype: after upcasting the
  stored grid (``scheduler.sigmas`` / ``alphas_cumprod``) to float64 -- the same values --
  they run in float64 end to end and agree to ``RTOL64 = 1e-10`` (measured: at most
  2e-14; 4e-13 where diffusers ends at sigma 0 and ld3 at ``1e-12 s_{N-1}``); the stock
  float32 grid agrees to ``RTOL32``.  DPM-Solver++'s update formulas are also compared in
  float64 by calling its ``*_order_update`` methods directly (``test_dpmpp_update_formulas_
  float64``).
* Orders.  DPM-Solver++: warm-up ``min(order, i + 1)``; ``lower_order_final=True`` lowers the
  last step to order 1 and the one before to at most 2, but only when ``N < 15`` (and
  ``final_sigmas_type="zero"`` or ``euler_at_final`` always make the last step first order).
  ld3's ``lower_order_final=True`` is ``min(order, N - i)``, the same for order <= 3; ld3's
  ``"auto"`` applies DPM-Solver's original threshold ``N < 10``, so for ``10 <= N < 15`` ld3
  ``"auto"`` equals diffusers ``lower_order_final=False`` (tested).  UniPC:
  ``lower_order_final=True`` is ``min(order, N - i)`` at every N (no threshold).
* DPM-Solver++ order 3 uses the weight ``c = 1`` on ``phi3 D2`` (ld3 ``coefficients=
  "reference"``); ld3 ``coefficients="exact"`` (``c = 2``) differs, as it must.
* UniPC: the corrector runs at the start of ``step(i)`` on the state produced by ``step(i-1)``,
  with that step's order, using the model value at the uncorrected state, which is then kept as
  the next step's model value -- exactly ld3's scheme.  Nothing runs after the final predictor,
  so the last step has no corrector in both.  ``disable_corrector=range(N)`` is ld3
  ``corrector=False``.  Order 2 uses the fixed predictor weight 1/2, order 1 the corrector
  weight 1/2, on both sides.
* Heun (``HeunDiscreteScheduler``) repeats every interior level (``2N - 1`` model calls for N
  intervals) and its final interval ends at sigma 0, taken as a first-order (Euler) step -- the
  EDM convention (last step Euler, NFE ``2N - 1``).  On ld3's grid ``s_0 .. s_{N-1}`` without the
  extra level the step ``s_{N-2} -> s_{N-1}`` would be Euler in ld3 but Heun in diffusers; the
  equivalent ld3 run is the grid ``s_0 .. s_{N-1}, 1e-12 s_{N-1}`` (its last step Euler).
* Clamping.  ``DDIMScheduler`` clamps its x0 estimate to [-1, 1] by default (``clip_sample=True``),
  which is not part of the ODE solver; it is switched off, as is ``thresholding`` everywhere.
* DDIM (``eta=0``) steps from ``t`` to ``t - num_train_timesteps // N``, which is the next
  timestep only when the spacing is that integer ratio: ``timestep_spacing="leading"`` with
  ``steps_offset=1`` (Stable Diffusion's setting) gives it; ``"trailing"`` with N not dividing
  1000 does not (the state lands between the grid's timesteps).

``test_a_wrong_convention_is_detected`` shows that every convention above matters by far more
than the tolerances.
"""
import math

import pytest
import torch

from ld3_cli.solvers import solve

diffusers = pytest.importorskip("diffusers")

RTOL64 = 1e-10  # float64 end to end
RTOL32 = 1e-5  # diffusers casts the sample (or the grid) to float32: float32 round-off over a few steps
TINY = 1e-12  # ld3's stand-in for diffusers' final sigma 0, relative to the last positive level

DIM = 6
_G = torch.Generator().manual_seed(11)
MEANS = 1.5 * torch.randn(3, DIM, dtype=torch.float64, generator=_G)
STDS = torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)
LOG_W = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
Z = torch.randn(4, DIM, dtype=torch.float64, generator=_G)  # unit noise; x_T = sigma_max * Z


def mixture_denoiser(x, sigma):
    """Exact ``E[x0 | x0 + sigma n = x]`` for the mixture; ``x``: [B, DIM] float64, ``sigma``: [B]."""
    s2 = sigma.to(torch.float64).view(-1, 1, 1) ** 2
    var = STDS.view(1, -1, 1) ** 2 + s2  # [B, K, 1]
    diff = x[:, None, :] - MEANS[None]  # [B, K, DIM]
    logp = LOG_W - 0.5 * (diff ** 2 / var).sum(-1) - 0.5 * DIM * torch.log(var[..., 0])
    w = torch.softmax(logp, dim=1)
    post = MEANS[None] + STDS.view(1, -1, 1) ** 2 / var * diff
    return (w[..., None] * post).sum(1)


class Recorder:
    """The shared model: logs every call as (sigma-space state, sigma) and returns the exact x0."""

    def __init__(self):
        self.points = []

    def __call__(self, x, sigma, cond=None):
        self.points.append((x.detach().clone(), float(sigma[0])))
        return mixture_denoiser(x, sigma)


def vp_alpha(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def vp_model(rec, x_t, sigma, prediction, alpha=None):
    """A VP-space network: sees ``x_t = alpha x``, returns eps or x0 (diffusers' ``prediction_type``)."""
    alpha = vp_alpha(sigma) if alpha is None else alpha
    x = x_t / alpha
    x0 = rec(x, torch.full((x.shape[0],), sigma, dtype=torch.float64))
    return x0 if prediction == "sample" else (x - x0) / sigma


def grid_of(sched):
    """The scheduler's sigma levels as float64 (its float32 values exactly); a final 0 becomes TINY."""
    g = sched.sigmas.to(torch.float64).clone()
    if g[-1] == 0:
        g[-1] = g[-2] * TINY
    return g


def run_vp_multistep(sched, prediction):
    """Drive DPMSolverMultistep / UniPCMultistep with ``step()``; return the final state in sigma-space and
    the recorder of the model calls."""
    rec = Recorder()
    x_t = vp_alpha(float(sched.sigmas[0])) * float(sched.sigmas[0]) * Z
    for k, t in enumerate(sched.timesteps):
        out = vp_model(rec, x_t, float(sched.sigmas[k]), prediction)
        x_t = sched.step(out, t, x_t).prev_sample
    return x_t / vp_alpha(float(sched.sigmas[-1])), rec


def run_karras(sched):
    """Drive EulerDiscrete / HeunDiscrete (state in sigma-space, model input scaled to VP) with eps output;
    return the final state and the recorder of the model calls."""
    rec = Recorder()
    x = float(sched.sigmas[0]) * Z
    for k, t in enumerate(sched.timesteps):
        x_in = sched.scale_model_input(x, t)
        out = vp_model(rec, x_in, float(sched.sigmas[k]), "epsilon")
        x = sched.step(out, t, x).prev_sample
    return x, rec


def rel_err(actual, expected) -> float:
    return float((actual - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def check(name, x_ld3, rec_ld3, x_ref, rec_ref, rtol):
    """ld3's result and every model call agree with the reference within ``rtol``."""
    assert len(rec_ld3.points) == len(rec_ref.points), (len(rec_ld3.points), len(rec_ref.points))
    err = rel_err(x_ld3, x_ref)
    for k, ((xa, sa), (xb, sb)) in enumerate(zip(rec_ld3.points, rec_ref.points)):
        assert sa == pytest.approx(sb, rel=1e-12), f"call {k}: sigma {sa} vs {sb}"
        err = max(err, rel_err(xa, xb))
    assert err <= rtol, f"{name}: max relative difference {err:.3e} > {rtol:.0e}"


def ld3(name, grid, **options):
    rec = Recorder()
    return solve(name, rec, float(grid[0]) * Z, grid, **options), rec


# --------------------------------------------------------------------------- Euler / DDIM


@pytest.mark.parametrize("final", ["custom", "zero"])
def test_euler_matches_euler_discrete(final):
    sched = diffusers.EulerDiscreteScheduler(prediction_type="epsilon")
    if final == "custom":  # an EDM rho=7 grid of 8 steps inside the model's range, float32-representable
        ramp = torch.linspace(0, 1, 9, dtype=torch.float64)
        grid = (80.0 ** (1 / 7) + ramp * (0.05 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
        grid = grid.to(torch.float32).to(torch.float64)
        sched.set_timesteps(sigmas=grid.tolist())
    else:  # integer timesteps, final sigma 0
        sched.set_timesteps(8)
        grid = grid_of(sched)
    assert torch.equal(grid_of(sched), grid)
    x_ref, rec_ref = run_karras(sched)
    x, rec = ld3("euler", grid)
    check(f"euler/EulerDiscrete[{final}]", x, rec, x_ref, rec_ref, RTOL32)


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("final", ["sigma_min", "zero"])
@pytest.mark.parametrize("upcast", [True, False])
def test_ddim_eta0_matches_ld3_euler(prediction, final, upcast):
    n = 10
    sched = diffusers.DDIMScheduler(prediction_type=prediction, timestep_spacing="leading", steps_offset=1,
                                    set_alpha_to_one=(final == "zero"), clip_sample=False, thresholding=False)
    sched.set_timesteps(n)
    if upcast:
        sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
        sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(torch.float64)
    ac = torch.stack([sched.alphas_cumprod[int(t)] for t in sched.timesteps] + [sched.final_alpha_cumprod])
    ac = ac.to(torch.float64)
    grid = torch.sqrt((1 - ac) / ac)
    if final == "zero":
        assert grid[-1] == 0
        grid[-1] = grid[-2] * TINY
    rec_ref = Recorder()
    x_t = torch.sqrt(ac[0]) * grid[0] * Z
    for k, t in enumerate(sched.timesteps):
        out = vp_model(rec_ref, x_t, float(grid[k]), prediction, alpha=float(torch.sqrt(ac[k])))
        x_t = sched.step(out, int(t), x_t, eta=0.0).prev_sample
    x_ref = x_t / torch.sqrt(ac[-1])
    x, rec = ld3("ddim", grid)
    check(f"euler/DDIM[{final},{'f64' if upcast else 'f32'}]", x, rec, x_ref, rec_ref, RTOL64 if upcast else RTOL32)


# --------------------------------------------------------------------------- Heun


def heun_scheduler(n):
    sched = diffusers.HeunDiscreteScheduler(prediction_type="epsilon", clip_sample=False)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("upcast", [True, False])
def test_heun_matches_heun_discrete(upcast):
    n = 6
    sched = heun_scheduler(n)
    levels = sched.sigmas.to(torch.float64)
    assert len(sched.timesteps) == 2 * n - 1 and levels[-1] == 0  # interior levels repeated, ends at 0
    if upcast:
        sched.sigmas = levels.clone()
    grid = torch.cat([levels[:1], levels[1:-1:2], levels[-2:-1] * TINY])  # s_0 .. s_{N-1}, ~0
    assert torch.equal(grid[1:-1], levels[2:-1:2]) and grid.numel() == n + 1
    x_ref, rec_ref = run_karras(sched)
    x, rec = ld3("heun", grid)
    assert len(rec.points) == 2 * n - 1
    check(f"heun/HeunDiscrete[{'f64' if upcast else 'f32'}]", x, rec, x_ref, rec_ref, RTOL64 if upcast else RTOL32)


# --------------------------------------------------------------------------- DPM-Solver++


def dpm_scheduler(n, order, solver_type="midpoint", lower_order_final=True, prediction="epsilon",
                  final="sigma_min"):
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=order, solver_type=solver_type,
        lower_order_final=lower_order_final, prediction_type=prediction, final_sigmas_type=final,
        thresholding=False, euler_at_final=False, use_karras_sigmas=False)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
@pytest.mark.parametrize("lof", [True, False])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_matches_dpmsolver_multistep(order, solver_type, lof, prediction):
    sched = dpm_scheduler(7, order, solver_type, lof, prediction)
    grid = grid_of(sched)
    x_ref, rec_ref = run_vp_multistep(sched, prediction)
    x, rec = ld3("dpmpp", grid, order=order, solver_type=solver_type, lower_order_final=lof,
                 coefficients="reference")
    check(f"dpmpp/o{order}/{solver_type}/lof={lof}", x, rec, x_ref, rec_ref, RTOL32)


@pytest.mark.parametrize("n,ld3_lof,diffusers_lof", [
    (8, "auto", True),  # both rules lower the final orders
    (12, "auto", False),  # ld3 auto = N < 10 (DPM-Solver); diffusers' True would apply (N < 15)
    (12, True, True),
    (16, False, True),  # diffusers ignores lower_order_final from N = 15 on
    (16, "auto", False),
])
def test_dpmpp_lower_order_final_thresholds(n, ld3_lof, diffusers_lof):
    sched = dpm_scheduler(n, 3, lower_order_final=diffusers_lof)
    x_ref, rec_ref = run_vp_multistep(sched, "epsilon")
    x, rec = ld3("dpmpp", grid_of(sched), order=3, lower_order_final=ld3_lof)
    check(f"dpmpp/o3/N={n}/lof {ld3_lof}~{diffusers_lof}", x, rec, x_ref, rec_ref, RTOL32)


@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_final_sigma_zero_is_the_limit_of_ld3_grid(order):
    sched = dpm_scheduler(7, order, prediction="sample", final="zero")
    assert sched.sigmas[-1] == 0
    x_ref, rec_ref = run_vp_multistep(sched, "sample")
    x, rec = ld3("dpmpp", grid_of(sched), order=order, lower_order_final=True)
    check(f"dpmpp/o{order}/final-zero", x, rec, x_ref, rec_ref, RTOL32)


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_dpmpp_update_formulas_float64(order, solver_type):
    """diffusers' update functions themselves, fed float64 (``step()`` would cast the sample to float32)."""
    n = 7
    sched = dpm_scheduler(n, order, solver_type)
    sched.sigmas = sched.sigmas.to(torch.float64)
    grid = grid_of(sched)
    rec_ref = Recorder()
    x_t = vp_alpha(float(grid[0])) * float(grid[0]) * Z
    outs = []
    for i in range(n):
        sched._step_index = i  # what step() advances; the update functions read their levels from it
        outs.append(sched.convert_model_output(vp_model(rec_ref, x_t, float(grid[i]), "epsilon"), sample=x_t))
        o = min(order, i + 1, n - i)  # warm-up and lower_order_final (N < 15), as in step()
        if o == 1:
            x_t = sched.dpm_solver_first_order_update(outs[-1], sample=x_t)
        elif o == 2:
            x_t = sched.multistep_dpm_solver_second_order_update(outs, sample=x_t)
        else:
            x_t = sched.multistep_dpm_solver_third_order_update(outs, sample=x_t)
    x_ref = x_t / vp_alpha(float(grid[-1]))
    x, rec = ld3("dpmpp", grid, order=order, solver_type=solver_type, lower_order_final=True)
    check(f"dpmpp/o{order}/{solver_type}/formulas-f64", x, rec, x_ref, rec_ref, RTOL64)


# --------------------------------------------------------------------------- UniPC


def unipc_scheduler(n, order, variant, lower_order_final=True, prediction="epsilon", final="sigma_min",
                    disable_corrector=()):
    sched = diffusers.UniPCMultistepScheduler(
        solver_order=order, solver_type=variant, lower_order_final=lower_order_final, predict_x0=True,
        prediction_type=prediction, final_sigmas_type=final, disable_corrector=list(disable_corrector),
        thresholding=False, use_karras_sigmas=False)
    sched.set_timesteps(n)
    return sched


@pytest.mark.parametrize("upcast", [True, False])
@pytest.mark.parametrize("lof", [True, False])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_unipc_multistep(variant, order, lof, upcast):
    prediction = "sample" if order == 2 else "epsilon"
    sched = unipc_scheduler(7, order, variant, lof, prediction)
    if upcast:
        sched.sigmas = sched.sigmas.to(torch.float64)
    x_ref, rec_ref = run_vp_multistep(sched, prediction)
    x, rec = ld3("unipc", grid_of(sched), order=order, variant=variant, lower_order_final=lof)
    check(f"unipc/{variant}/o{order}/lof={lof}/{'f64' if upcast else 'f32'}", x, rec, x_ref, rec_ref,
          RTOL64 if upcast else RTOL32)


@pytest.mark.parametrize("case", ["no-corrector", "final-zero", "N=12-auto", "N=12-lof"])
def test_unipc_options(case):
    n = 12 if case.startswith("N=12") else 7
    kwargs, opts = {}, {"lower_order_final": True}
    if case == "no-corrector":
        kwargs["disable_corrector"], opts["corrector"] = range(n), False
    if case == "final-zero":
        kwargs["final"] = "zero"
    if case == "N=12-auto":  # ld3 auto = N < 10; diffusers' lower_order_final has no threshold
        kwargs["lower_order_final"], opts["lower_order_final"] = False, "auto"
    sched = unipc_scheduler(n, 3, "bh2", **kwargs)
    sched.sigmas = sched.sigmas.to(torch.float64)
    x_ref, rec_ref = run_vp_multistep(sched, "epsilon")
    x, rec = ld3("unipc", grid_of(sched), order=3, variant="bh2", **opts)
    check(f"unipc/bh2/o3/{case}", x, rec, x_ref, rec_ref, RTOL64)


# --------------------------------------------------------------------------- the comparison can fail


MISMATCHES = {
    "dpmpp lower_order_final": (lambda: dpm_scheduler(7, 3, lower_order_final=True),
                                ("dpmpp", {"order": 3, "lower_order_final": False})),
    "dpmpp N=12 auto vs diffusers True": (lambda: dpm_scheduler(12, 3, lower_order_final=True),
                                          ("dpmpp", {"order": 3, "lower_order_final": "auto"})),
    "dpmpp solver_type": (lambda: dpm_scheduler(7, 2, "midpoint"),
                          ("dpmpp", {"order": 2, "solver_type": "heun", "lower_order_final": True})),
    "dpmpp exact coefficients": (lambda: dpm_scheduler(7, 3),
                                 ("dpmpp", {"order": 3, "coefficients": "exact", "lower_order_final": True})),
    "unipc variant": (lambda: unipc_scheduler(7, 3, "bh2"),
                      ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": True})),
    "unipc corrector": (lambda: unipc_scheduler(7, 3, "bh2"),
                        ("unipc", {"order": 3, "variant": "bh2", "lower_order_final": True, "corrector": False})),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_a_wrong_convention_is_detected(name):
    make, (solver, opts) = MISMATCHES[name]
    sched = make()
    x_ref, _ = run_vp_multistep(sched, "epsilon")
    x, _ = ld3(solver, grid_of(sched), **opts)
    assert rel_err(x, x_ref) > 100 * RTOL32, name


def test_heun_on_the_shorter_grid_is_a_different_method():
    """ld3's last-step-Euler on ``s_0 .. s_{N-1}`` is not diffusers' state at ``s_{N-1}`` (Heun there)."""
    n = 6
    sched = heun_scheduler(n)
    sched.sigmas = sched.sigmas.to(torch.float64)
    _, rec_ref = run_karras(sched)
    x_ref_at_last_level = rec_ref.points[-1][0]  # the state where the final (Euler-to-0) step starts
    levels = sched.sigmas[:-1:2].to(torch.float64)  # s_0 .. s_{N-1}
    x, _ = ld3("heun", levels)
    assert rel_err(x, x_ref_at_last_level) > 100 * RTOL32
    # ... while the grid extended to ~0 reproduces that state at its grid point N-1
    states = {}
    ld3("heun", torch.cat([levels, levels[-1:] * TINY]), callback=lambda i, xi, di: states.__setitem__(i, xi))
    assert rel_err(states[n - 1], x_ref_at_last_level) <= RTOL64
