"""LD3Scheduler (the export's ld3_diffusers.py) inside stock diffusers pipelines, unmodified but for
``pipe.scheduler = ...``: a DDPM UNet2DModel pipeline, Stable Diffusion with classifier-free guidance and a
Stable Diffusion 3 (flow matching) pipeline reproduce ld3's own sampler on the same model and noises, for an LD3
schedule (decoupled evaluation times and scales) and a learned solver (a full coefficient table); the scheduler
round-trips through save_pretrained / from_pretrained and refuses what it cannot run."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch

from ld3_cli.export import ExportSchedule, write_export
from ld3_cli.models import BuildContext, build_model
from ld3_cli.models.conventions import network_convention
from ld3_cli.schedules import discretize
from ld3_cli.solvers.residual import ResidualOperator
from ld3_cli.solvers.sampler import Sampler

pytest.importorskip("diffusers")
PROMPTS = ["a red cat", "blue sky", "green field"]
RTOL = 1e-4  # the acceptance: relative max abs difference to ld3's final states


def _learned_sampler(model, solver, opts, nfe, learned, seed=0) -> Sampler:
    """An LD3-like sampler on the model's schedule: time-uniform steps, perturbed evaluation times with the VP
    state scales alpha(sigma) / alpha(sigma_eval) (the official semantics); ``learned``: a perturbed full table
    (``"residual"``: and a residual operator from step 1, every weight drawn)."""
    g = torch.Generator().manual_seed(seed)
    sched = model.schedule
    sig = discretize("time_uniform", nfe, sched)
    ev = sig.clone()
    ev[1:-1] = sig[1:-1] * (1 + 0.08 * torch.rand(nfe - 1, generator=g, dtype=torch.float64) - 0.04)
    scales = sched.alpha_at(sig) / sched.alpha_at(ev)
    s = Sampler(solver, sig, dict(opts), ev, scales, "step")
    if learned:
        t = s.base_table().widen(nfe).full()
        corr = None if t.corr is None else t.corr + 0.02 * torch.randn(t.corr.shape, generator=g, dtype=torch.float64)
        s.coefficients = dataclasses.replace(
            t, pred=t.pred + 0.02 * torch.randn(t.pred.shape, generator=g, dtype=torch.float64), corr=corr)
    if learned == "residual":
        s.residual = ResidualOperator(t.steps, model.shape[0], t.history, 3, g, first=1)
        with torch.no_grad():
            for w in s.residual.weights:
                w.copy_(0.05 * torch.randn(w.shape, generator=g))
    return s


def _export(model, s: Sampler, folder):
    es = ExportSchedule("ld3", s.sigmas, s.evaluation_sigmas, model.schedule, s.solver, s.options, s.steps, "tiny",
                        "tiny-0", eval_scales=s.eval_scales, noise_estimate=s.noise_estimate, coefficients=s.table(),
                        learned_coefficients=s.coefficients is not None, residual=s.residual,
                        network=network_convention(model, s.evaluation_sigmas))
    write_export(es, folder, ["diffusers"])
    return folder


def _scheduler_class(folder):
    """LD3Scheduler imported from the export folder's own ld3_diffusers.py, with the folder on sys.path (as a user
    does; its runner ld3_sampler.py is imported from there)."""
    name = f"ld3_diffusers_{abs(hash(str(folder)))}"
    spec = importlib.util.spec_from_file_location(name, folder / "ld3_diffusers.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module.LD3Scheduler


def _pipeline(cls, folder, model, s, export, **kwargs):
    """A stock pipeline of class ``cls`` from ``folder`` whose scheduler is the LD3Scheduler of ``s``, exported to
    ``export``."""
    scheduler = _scheduler_class(_export(model, s, export)).from_export(export)
    pipe = cls.from_pretrained(folder, **kwargs)
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _watch_final_state(scheduler) -> list:
    """Record each step's ``prev_sample`` (the last is the state the pipeline decodes); the pipeline is not touched.
    Needed where a pipeline clamps its output (DDPMPipeline), and the random tiny networks give states far outside
    [-1, 1]."""
    seen, step = [], scheduler.step

    def watched(*args, **kwargs):
        out = step(*args, **kwargs)
        seen.append(out.prev_sample if hasattr(out, "prev_sample") else out[0])
        return out

    scheduler.step = watched
    return seen


def _rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


CASES = [("unipc", {"order": 3}, False, "eps"), ("unipc", {"order": 3}, True, "eps"),
         ("dpmpp", {"order": 2}, True, "eps"), ("unipc", {"order": 3}, True, "v"),
         ("unipc", {"order": 3}, "residual", "eps")]


@pytest.mark.parametrize("solver,opts,learned,prediction", CASES,
                         ids=["ld3-unipc", "learned-unipc", "learned-dpmpp", "learned-unipc-v", "residual-unipc"])
def test_ddpm_pipeline_with_the_ld3_scheduler_equals_ld3(ddpm_dir, tmp_path, solver, opts, learned, prediction):
    """A DDPM-type UNet2DModel pipeline; ``v``: the same network read as a v-predictor (model.prediction=v)."""
    from diffusers import DDPMPipeline

    model = build_model({"kind": "diffusers", "path": str(ddpm_dir), "prediction": prediction}, BuildContext())
    s = _learned_sampler(model, solver, opts, 4, learned)
    pipe = _pipeline(DDPMPipeline, ddpm_dir, model, s, tmp_path)
    scheduler = pipe.scheduler
    assert scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[prediction]
    assert scheduler.nfe == 4 and scheduler.timesteps.shape == (4,)
    assert (scheduler.config.residual is not None) == (learned == "residual")  # runs it: `ours` has it
    final = _watch_final_state(scheduler)
    with torch.no_grad():
        images = pipe(batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=4,
                      output_type="pt").images
        noise = torch.randn((3, *model.shape), generator=torch.Generator().manual_seed(0))
        ours = s.solve(model, noise * float(s.sigmas[0]))
    # DDPMPipeline starts from unscaled noise: init_noise_sigma = alpha(sigma_max) sigma_max, 2e-5 from 1 here
    assert abs(scheduler.init_noise_sigma - 1) < 1e-4
    assert torch.equal(images, (final[-1] / 2 + 0.5).clamp(0, 1))   # what the pipeline decodes
    assert _rel(final[-1], ours) <= RTOL


@pytest.mark.parametrize("learned", [False, True], ids=["ld3", "learned"])
def test_stable_diffusion_with_guidance_and_the_ld3_scheduler_equals_ld3(sd_dir, tmp_path, learned):
    pytest.importorskip("transformers")
    from diffusers import StableDiffusionPipeline

    model = build_model({"kind": "diffusers", "path": str(sd_dir), "prompts": PROMPTS, "guidance_scale": 7.5},
                        BuildContext())
    s = _learned_sampler(model, "unipc", {"order": 3}, 5, learned, seed=1)
    pipe = _pipeline(StableDiffusionPipeline, sd_dir, model, s, tmp_path, safety_checker=None,
                     requires_safety_checker=False)
    idx = torch.tensor([2, 0])
    noise = torch.randn((2, *model.shape), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # StableDiffusionPipeline multiplies the latents it is given (or draws) by init_noise_sigma itself
        latents = pipe([PROMPTS[i] for i in idx.tolist()], num_inference_steps=5, guidance_scale=7.5,
                       latents=noise, output_type="latent").images
        ours = s.solve(model, noise * float(s.sigmas[0]), idx)
    assert _rel(latents, ours) <= RTOL


def test_sd3_flow_pipeline_with_the_ld3_scheduler_equals_ld3(sd3_dir, tmp_path, caplog):
    pytest.importorskip("transformers")
    from diffusers import StableDiffusion3Pipeline

    model = build_model({"kind": "diffusers", "path": str(sd3_dir), "prompts": PROMPTS, "max_sequence_length": 8,
                         "guidance_scale": 3.0}, BuildContext())
    s = _learned_sampler(model, "dpmpp", {"order": 2}, 4, True, seed=2)
    pipe = _pipeline(StableDiffusion3Pipeline, sd3_dir, model, s, tmp_path, text_encoder_3=None, tokenizer_3=None)
    scheduler = pipe.scheduler
    assert scheduler.config.network_kind == "flow" and scheduler.config.prediction_type == "flow_prediction"
    idx = torch.tensor([1, 2])
    noise = torch.randn((2, *model.shape), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        # SD3 pipelines start from the latents as given: scaled by init_noise_sigma (t_max = 80 / 81 here)
        latents = pipe([PROMPTS[i] for i in idx.tolist()], num_inference_steps=4, guidance_scale=3.0,
                       latents=noise * scheduler.init_noise_sigma, output_type="latent",
                       max_sequence_length=8).images
        ours = s.solve(model, noise * float(s.sigmas[0]), idx)
    assert scheduler.init_noise_sigma == pytest.approx(80 / 81, rel=1e-12)
    assert "latents = torch.randn(shape) * scheduler.init_noise_sigma" in caplog.text   # said at load
    assert _rel(latents, ours) <= RTOL


def test_an_edm_preconditioned_network_in_a_pipeline_loop_equals_ld3(tmp_path):
    """EDM preconditioning (c_in in scale_model_input, c_noise = log(sigma) / 4 as the timestep, c_skip / c_out in
    step), driven by the loop every diffusers pipeline runs, on a tiny random EDM network."""
    from ld3_cli.models.edm.precond import EDMPrecond

    torch.manual_seed(0)
    model = EDMPrecond(8, 1, model_type="SongUNet", model_channels=8, channel_mult=[1], num_blocks=1,
                       attn_resolutions=[]).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = _learned_sampler(model, "unipc", {"order": 3}, 5, True, seed=3)
    scheduler = _scheduler_class(_export(model, s, tmp_path)).from_export(tmp_path)
    assert scheduler.config.network_kind == "edm" and scheduler.init_noise_sigma == pytest.approx(80.0)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    scheduler.set_timesteps(scheduler.nfe)
    latents = noise * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            f_x = model.model(scheduler.scale_model_input(latents, t), t.expand(2), None)
            latents = scheduler.step(f_x, t, latents).prev_sample
        ours = s.solve(model, noise * float(s.sigmas[0]))
    assert _rel(latents, ours) <= RTOL


def test_the_scheduler_round_trips_and_refuses_what_it_cannot_run(ddpm_dir, tmp_path, caplog):
    model = build_model({"kind": "diffusers", "path": str(ddpm_dir)}, BuildContext())
    s = _learned_sampler(model, "unipc", {"order": 3}, 4, True)
    cls = _scheduler_class(_export(model, s, tmp_path / "export"))
    a = cls.from_export(tmp_path / "export")
    a.save_pretrained(tmp_path / "saved")
    b = cls.from_pretrained(tmp_path / "saved")
    assert dict(b.config) == dict(a.config) and torch.equal(a.timesteps, b.timesteps)
    assert b.init_noise_sigma == a.init_noise_sigma
    # the same run, step by step, from both
    x = torch.randn(2, *model.shape, generator=torch.Generator().manual_seed(5)) * a.init_noise_sigma
    outs = []
    for sch in (a, b):
        sch.set_timesteps(4)
        lat = x
        for t in sch.timesteps:
            lat = sch.step(torch.tanh(lat) * 0.1 + t / 5000, t, lat).prev_sample
        outs.append(lat)
    assert torch.equal(outs[0], outs[1])
    with pytest.raises(ValueError, match="exactly 4 network evaluations; call the pipeline with num_inference_steps=4"):
        a.set_timesteps(50)
    with pytest.raises(ValueError, match="no custom timesteps or sigmas"):
        a.set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="all 4 evaluations"):
        a.step(torch.zeros_like(x), 0, x)
    with pytest.raises(NotImplementedError, match="image-to-image"):
        a.add_noise(x, x, torch.tensor([1]))


@pytest.mark.parametrize("solver,nfe,opts", [("heun", 5, {}), ("k_heun", 5, {}), ("k_dpmpp_2m", 4, {}),
                                             ("unipc", 4, {}), ("unipc", 4, {"analytic_first": True})],
                         ids=["heun", "k_heun", "k_dpmpp_2m", "unipc", "unipc-analytic-first"])
def test_the_scheduler_loop_for_every_kind_of_run_and_what_a_pipeline_does_to_its_latents(tmp_path, solver, nfe,
                                                                                          opts):
    """Heun (two evaluations a step), the stock samplers' step onto 0, the analytic first step (the pipeline's start
    is the state at the first evaluation), and the latents a pipeline hands back: a copy (set again from the
    sample), half precision (ld3's state stays float32) and an in-place edit (seen)."""
    from ld3_cli.models.adapters import NetworkDenoiser
    from ld3_cli.schedules.noise import VPDiscrete
    from ld3_cli.solvers import get_solver

    sched = VPDiscrete.linear()
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def net(x_t, t, cond=None):                                    # an eps network on the native state
        return torch.tanh(conv(x_t.float())) * 0.5 + (t.float() / 2000).view(-1, 1, 1, 1)

    model = NetworkDenoiser(net, sched).requires_grad_(False)
    steps = get_solver(solver).steps_for(nfe, opts)
    s = Sampler(solver, discretize("time_uniform", steps, sched), dict(opts))
    es = ExportSchedule("ld3", s.sigmas, s.evaluation_sigmas, sched, solver, dict(opts), nfe, "m", "m-0",
                        coefficients=s.table(), network=network_convention(model, s.evaluation_sigmas))
    write_export(es, tmp_path, ["diffusers"])
    scheduler = _scheduler_class(tmp_path).from_export(tmp_path)
    assert scheduler.nfe == nfe == len(scheduler.timesteps)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = s.solve(model, noise * float(s.sigmas[0]))

        def loop(hand_back, dtype=torch.float32):
            scheduler.set_timesteps(nfe)
            lat = (noise * scheduler.init_noise_sigma).to(dtype)
            for t in scheduler.timesteps:
                lat = hand_back(scheduler.step(net(lat, t.expand(2)).to(dtype), t, lat).prev_sample)
            return lat

        assert _rel(loop(lambda x: x), ours) <= 1e-6                 # our own sample back: no rounding at all
        assert _rel(loop(lambda x: x.clone()), ours) <= RTOL         # a copy: set again from it
        half = loop(lambda x: x, torch.float16)
        assert half.dtype == torch.float16 and _rel(half, ours) <= 5e-3   # the network's fp16 input/output only
        # an in-place edit of the latents (a step-end callback) reaches the state as an edited copy does
        assert _rel(loop(lambda x: x.mul_(1.001)), loop(lambda x: x * 1.001)) <= 1e-6
