"""Take home what ld3 learned: from one `ld3 export` folder, k-diffusion's sampler signature (`sample_ld3`) and
the ComfyUI node pack reproduce `ld3 sample` -- for an LD3 schedule (decoupled evaluation times and scales) and a
learned-solver artifact, on the embedded default (through the stages) and on the real MNIST DDPM (with
k-diffusion's own model wrapper where k-diffusion is installed, and ComfyUI's rounding of the network's time).
ComfyUI is exercised through tests/stages_export/comfyui_standin.py (its calling convention, from its source)."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import comfyui_standin as comfy
import pytest
import torch
from ld3_test_helpers import kdiffusion, one_thread
from stages_export_helpers import make_ctx

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.export import ExportSchedule, write_export
from ld3_cli.models.adapters import set_time_rounding
from ld3_cli.models.conventions import network_convention
from ld3_cli.models.mnist_ddpm import MnistDDPM, load_state_dict
from ld3_cli.schedules import discretize
from ld3_cli.solvers.sampler import Sampler
from ld3_cli.stages import export as export_stage
from ld3_cli.stages import train
from ld3_cli.stages.artifacts import learned_schedule, load_sampler

LEARNED_SOLVER = ["train.learn=[steps,offsets,coefficients]", "train.iters_phase3=4", "solver=dpmpp",
                  "solver.order=2", "nfe=4"]
LD3 = ["train.iters_phase1=0", "train.iters_phase2=6"]  # LD3's joint phase only: the result has decoupled times
TOL = 1e-5  # the acceptance: relative max abs difference to ld3's final states


def _import(path, name=None):
    """A module (or, for a folder, a package) from an export folder, as a user imports it (the folder on sys.path;
    a package imports its siblings relatively, as ComfyUI imports a node pack)."""
    name = name or f"export_{abs(hash(str(path)))}_{path.stem}"
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # the export folder, as a user puts it on sys.path
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def _rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def exports(learned_store, tmp_path_factory):
    """``{"ld3": ..., "learned": ...}``: (export folder, the artifact's Sampler, a stage context) for an LD3 schedule
    (unipc-3, NFE 5) and a learned solver (dpmpp-2, NFE 4) trained on the session store's teacher pairs."""
    store, _ = learned_store
    out = {}
    with one_thread():
        for extra in (LD3, LEARNED_SOLVER):
            train.run(make_ctx("train", store, extra))
        for name, extra in (("ld3", LD3), ("learned", LEARNED_SOLVER)):
            folder = tmp_path_factory.mktemp(name)
            ctx = make_ctx("export", store, [*extra, f"export.out={folder}"])
            export_stage.run(ctx)
            out[name] = folder, load_sampler(learned_schedule(ctx), ctx.model.schedule), ctx
    return out


def _heldout_noises(ctx, n=6):
    return noise_for_seeds(range(1_000_000, 1_000_000 + n), tuple(ctx.model.shape))


@pytest.mark.parametrize("which", ["ld3", "learned"])
def test_sample_ld3_from_the_export_folder_equals_ld3_sample(exports, which):
    folder, sampler, ctx = exports[which]
    assert (sampler.coefficients is not None) == (which == "learned")
    assert which == "learned" or float((sampler.evaluation_sigmas / sampler.sigmas - 1).abs().max()) > 0
    kd = _import(folder / "ld3_kdiffusion.py")
    noises = _heldout_noises(ctx)
    with torch.no_grad():
        ours = sampler.solve(ctx.model, noises * float(sampler.sigmas[0]))         # what `ld3 sample` decodes
        x = noises * kd.SIGMAS[0]                                                   # as a k-diffusion user does
        theirs = kd.sample_ld3(lambda z, sigma, **kw: ctx.model(z, sigma, None), x, kd.SIGMAS, extra_args={},
                               callback=None, disable=True)
    assert _rel(theirs, ours) <= TOL


@pytest.mark.parametrize("which", ["ld3", "learned"])
def test_the_comfyui_node_pack_equals_ld3_sample(exports, which):
    folder, sampler, ctx = exports[which]
    comfy.install()
    pack = _import(folder / "comfyui_ld3", f"comfyui_ld3_{which}")
    node_cls = pack.NODE_CLASS_MAPPINGS["LD3Sampler"]
    names = pack.schedule_names()
    assert len(names) == 1 and node_cls.INPUT_TYPES() == {"required": {"schedule": (names,)}}
    assert node_cls.RETURN_TYPES == ("SAMPLER", "SIGMAS") and node_cls.CATEGORY == "sampling/custom_sampling/samplers"
    sampler_obj, sigmas = getattr(node_cls(), node_cls.FUNCTION)(names[0])
    assert sigmas.dtype == torch.float32 and sigmas.tolist() == sampler.sigmas.float().tolist()
    sched = ctx.model.schedule
    wrap = comfy.ModelWrap(comfy.X0Model(lambda z, s: ctx.model(z, s, None), sched.sigma_min, sched.sigma_max))
    noises = _heldout_noises(ctx)
    with torch.no_grad():
        ours = sampler.solve(ctx.model, noises * float(sampler.sigmas[0]))
        theirs = comfy.sample_custom(sampler_obj, sigmas, wrap, noises)
        # ComfyUI's own KSAMPLER would start from sqrt(1 + 80^2) noise at sigma_max: the node starts where ld3 does
        stock_start = comfy.sample_custom(comfy.KSAMPLER(sampler_obj.sampler_function), sigmas, wrap, noises)
    assert _rel(theirs, ours) <= TOL
    assert _rel(stock_start, ours) > 3 * TOL


def test_the_comfyui_node_refuses_a_flow_schedule(tmp_path):
    """ComfyUI's sigma for a flow model is the flow time: the node runs EDM-sigma schedules only, and says so."""
    from ld3_cli.schedules.noise import FlowMatching

    sched = FlowMatching()
    sig = discretize("logsnr", 4, sched)
    s = Sampler("dpmpp", sig, {"order": 2})
    es = ExportSchedule("logsnr", sig, sig, sched, "dpmpp", {"order": 2}, 4, "flow", "flow-0", coefficients=s.table())
    write_export(es, tmp_path, ["comfyui"])
    comfy.install()
    pack = _import(tmp_path / "comfyui_ld3", "comfyui_ld3_flow")
    with pytest.raises(ValueError, match="flow-matching model.*LD3Scheduler"):
        pack.LD3Sampler().get_sampler(pack.schedule_names()[0])


# -- the real MNIST DDPM ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ddpm(ddpm_weights):
    with one_thread():
        state = load_state_dict(ddpm_weights)
        exact, rounded = MnistDDPM(state).eval(), MnistDDPM(state).eval()
        set_time_rounding(rounded, "nearest")
    return exact, rounded


def _ddpm_export(model, folder, learned: bool):
    """An LD3-like schedule on the DDPM (decoupled times with the VP state scales) and, for ``learned``, a perturbed
    full coefficient table, exported with the model's network convention."""
    g = torch.Generator().manual_seed(7)
    sched = model.schedule
    sig = discretize("time_uniform", 5, sched)
    ev = sig.clone()
    ev[1:-1] = sig[1:-1] * (1 + 0.08 * torch.rand(4, generator=g, dtype=torch.float64) - 0.04)
    s = Sampler("unipc", sig, {"order": 3}, ev, sched.alpha_at(sig) / sched.alpha_at(ev), "step")
    if learned:
        t = s.base_table().widen(5).full()
        s.coefficients = dataclasses.replace(
            t, pred=t.pred + 0.02 * torch.randn(t.pred.shape, generator=g, dtype=torch.float64),
            corr=t.corr + 0.02 * torch.randn(t.corr.shape, generator=g, dtype=torch.float64))
    es = ExportSchedule("ld3", s.sigmas, s.evaluation_sigmas, sched, "unipc", {"order": 3}, 5, "mnist_ddpm", "ddpm-0",
                        eval_scales=s.eval_scales, coefficients=s.table(), learned_coefficients=learned,
                        network=network_convention(model, s.evaluation_sigmas))
    write_export(es, folder, ["kdiffusion", "comfyui"])
    return s


class EpsNet(torch.nn.Module):
    """The DDPM's raw eps network ``eps(z, step)``, as k-diffusion's wrappers call a network."""

    def __init__(self, ddpm):
        super().__init__()
        self.ddpm = ddpm

    def forward(self, z, t):
        return self.ddpm.eps(z, t)


@pytest.mark.needs_shared
@pytest.mark.parametrize("learned", [False, True], ids=["ld3", "learned"])
def test_sample_ld3_with_kdiffusions_own_ddpm_wrapper_equals_ld3(ddpm, tmp_path, learned):
    _, external = kdiffusion()
    exact, rounded = ddpm
    s = _ddpm_export(exact, tmp_path, learned)
    kd = _import(tmp_path / "ld3_kdiffusion.py")
    noises = noise_for_seeds(range(1_000_000, 1_000_004), (1, 28, 28))
    ac = exact.schedule.alphas_cumprod.float()
    with torch.no_grad():
        for model, quantize in ((exact, False), (rounded, True)):   # quantize=True: the nearest step, as ComfyUI
            wrapper = external.DiscreteEpsDDPMDenoiser(EpsNet(exact), ac, quantize=quantize)
            ours = s.solve(model, noises * float(s.sigmas[0]))
            theirs = kd.sample_ld3(wrapper, noises * kd.SIGMAS[0], kd.SIGMAS, disable=True)
            assert _rel(theirs, ours) <= TOL, quantize


@pytest.mark.needs_shared
def test_the_comfyui_node_on_the_ddpm_rounds_time_as_comfyui(ddpm, tmp_path, caplog):
    exact, rounded = ddpm
    s = _ddpm_export(rounded, tmp_path, True)            # trained (here: exported) with time_rounding=nearest
    comfy.install()
    pack = _import(tmp_path / "comfyui_ld3", "comfyui_ld3_ddpm")
    sampler_obj, sigmas = pack.LD3Sampler().get_sampler(pack.schedule_names()[0])
    assert "ComfyUI rounds" not in caplog.text               # it was made for ComfyUI's rounding: no warning
    _ddpm_export(exact, tmp_path / "exact", True)
    pack_exact = _import(tmp_path / "exact" / "comfyui_ld3", "comfyui_ld3_ddpm_exact")
    pack_exact.LD3Sampler().get_sampler(pack_exact.schedule_names()[0])
    assert "ComfyUI rounds it to the nearest training step" in caplog.text   # an exact-time schedule is flagged
    wrap = comfy.ModelWrap(comfy.EpsModel(lambda z, t: exact.eps(z, t), exact.schedule.alphas_cumprod))
    noises = noise_for_seeds(range(1_000_000, 1_000_004), (1, 28, 28))
    with torch.no_grad():
        theirs = comfy.sample_custom(sampler_obj, sigmas, wrap, noises)
        # ComfyUI scales the network's input in float32 (x / sqrt(sigma^2 + 1)), ld3 with a float64 alpha: 1e-5
        assert _rel(theirs, s.solve(rounded, noises * float(s.sigmas[0]))) <= 2 * TOL
        # the same schedule on the exact network time is measurably not what ComfyUI runs
        assert _rel(theirs, s.solve(exact, noises * float(s.sigmas[0]))) > 1e-3
