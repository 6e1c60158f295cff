"""``ld3 export``: every format reads back to the exported schedule; diffusers builds schedulers on it."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from stages_export_helpers import make_ctx

from ld3_cli.errors import ConfigError
from ld3_cli.export import (ExportSchedule, diffusers_snippet, integer_timesteps, karras_ramp, load_schedule_json,
                            parse_comfyui_text, parse_formats, parse_tensor_literal, vp_beta_config)
from ld3_cli.schedules import EDM, FlowMatching, VPDiscrete, discretize
from ld3_cli.stages import export as export_stage


def _exec(text: str) -> dict:
    ns = {"__name__": "ld3_export_snippet", "__file__": "snippet.py"}
    exec(compile(text, "snippet.py", "exec"), ns)  # noqa: S102 - our own generated file
    return ns


@pytest.fixture(scope="module")
def exported(learned_store, tmp_path_factory):
    """The learned schedule exported in all formats: (result of the stage, output dir, stdout)."""
    store, _ = learned_store
    out = tmp_path_factory.mktemp("export")
    ctx = make_ctx("export", store, [f"export.out={out}"])
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = export_stage.run(ctx)
    return res, out, buf.getvalue()


def test_json_round_trip_equals_artifact(exported, learned_store, learned_tensors):
    res, out, stdout = exported
    _, art = learned_store
    data = load_schedule_json(out / "schedule.json")
    for key in ("sigmas", "sigmas_eval", "t", "t_eval", "lambdas", "lambdas_eval"):  # bit-exact float64
        assert torch.equal(torch.tensor(data[key], dtype=torch.float64), learned_tensors[key]), key
    assert data["nfe"] == 5 and data["steps"] == 5 and data["solver"] == "unipc"
    assert data["solver_options"]["order"] == 3 and data["model"] == "mnist_gmm"
    prov = data["provenance"]
    assert prov["artifact_key"] == art.key and prov["artifact_path"] == str(art.path)
    assert prov["noise_schedule"]["kind"] == "edm" and prov["noise_schedule"]["sigma_max"] == 80.0
    assert prov["train"]["best_val"] == art.manifest["info"]["best_val"]
    # the file is a valid `custom` discretization: the same sigmas come back
    back = discretize("custom", 5, EDM(), path=str(out / "schedule.json"))
    assert torch.equal(back, learned_tensors["sigmas"])
    # the directory is printed at the end, the decoupled times are flagged
    assert stdout.strip().splitlines()[-1] == f"export: {out}"
    gap = float((learned_tensors["sigmas_eval"][:-1] / learned_tensors["sigmas"][:-1] - 1).abs().max())
    assert res["schedule"].decoupled_gap() == gap
    assert (f"up to {gap:.2%}" in stdout) if gap > 0 else ("decoupled" not in stdout)


def test_all_files_written_atomically(exported):
    res, out, _ = exported
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    slug = res["schedule"].slug()
    assert names == ["comfyui_ld3/__init__.py", "comfyui_ld3/ld3_kdiffusion.py", "comfyui_ld3/ld3_sampler.py",
                     f"comfyui_ld3/schedules/{slug}.json", "comfyui_sigmas.json", "comfyui_sigmas.txt",
                     "comfyui_sigmas_to_zero.txt", "diffusers_snippet.py", "kdiffusion_sigmas.py", "ld3_diffusers.py",
                     "ld3_kdiffusion.py", "ld3_sampler.py", "schedule.json"]  # and no temporary files left behind
    assert sorted(p.relative_to(out).as_posix() for p in res["files"]) == names
    # the runtime files are ld3's tested sources, copied as they are; the pack's schedule is schedule.json
    from ld3_cli.export.runtime import runtime_source

    assert (out / "ld3_kdiffusion.py").read_text() == runtime_source("ld3_kdiffusion.py")
    assert (out / "comfyui_ld3" / "__init__.py").read_text() == runtime_source("comfyui_nodes.py")
    assert (out / "comfyui_ld3" / "schedules" / f"{slug}.json").read_text() == (out / "schedule.json").read_text()


def test_kdiffusion_literal_parses_back(exported, learned_tensors):
    _, out, _ = exported
    text = (out / "kdiffusion_sigmas.py").read_text()
    assert parse_tensor_literal(text) == learned_tensors["sigmas"].tolist()  # exact floats, without executing
    ns = _exec(text)
    # float32: k-diffusion computes in the list's dtype, and a float64 list breaks a float32 model
    sig32 = learned_tensors["sigmas"].float()
    assert ns["sigmas"].dtype == torch.float32 and torch.equal(ns["sigmas"], sig32)
    assert ns["sigmas_to_zero"].tolist() == sig32.tolist() + [0.0]
    assert "ld3_kdiffusion import SIGMAS, sample_ld3" in text and "WARNING: this schedule was trained for ld3's" in text


def test_comfyui_list_parses_back(exported, learned_tensors):
    _, out, _ = exported
    line = (out / "comfyui_sigmas.txt").read_text()
    assert "e" not in line.lower() and len(line.strip().splitlines()) == 1  # ManualSigmas reads plain decimals
    assert parse_comfyui_text(line) == learned_tensors["sigmas"].tolist()
    assert parse_comfyui_text((out / "comfyui_sigmas_to_zero.txt").read_text()) == \
        learned_tensors["sigmas"].tolist() + [0.0]
    data = json.loads((out / "comfyui_sigmas.json").read_text())
    assert data["space"] == "sigma" and data["sigmas"] == learned_tensors["sigmas"].tolist()
    assert data["sigmas_to_zero"] == data["sigmas"] + [0.0]
    assert data["comfyui_sampler"] == "uni_pc_bh2"  # unipc variant bh2
    with pytest.raises(ConfigError, match="exponents"):
        parse_comfyui_text("80.0, 2e-3")


def test_diffusers_snippet_builds_schedulers_on_our_sigmas(exported, learned_tensors):
    pytest.importorskip("diffusers")
    _, out, _ = exported
    ns = _exec((out / "diffusers_snippet.py").read_text())
    sig = learned_tensors["sigmas"]
    sig32 = sig.to(torch.float32)
    euler = ns["euler_scheduler"]()
    assert torch.equal(euler.sigmas, sig32)  # a custom list is used as given: nothing appended
    assert len(euler.timesteps) == 5
    assert torch.equal(ns["euler_scheduler"](end_at_zero=True).sigmas, torch.cat([sig32, torch.zeros(1)]))
    edm = ns["scheduler"]  # EDM model -> EDMEulerScheduler on the Karras-ramp inverse, plus its terminal 0
    assert type(edm).__name__ == "EDMEulerScheduler"
    torch.testing.assert_close(edm.sigmas, torch.cat([sig32, torch.zeros(1)]), rtol=1e-6, atol=0)
    torch.testing.assert_close(edm.timesteps, 0.25 * torch.log(sig32), rtol=1e-5, atol=1e-6)  # EDM c_noise
    assert ns["SIGMAS_EVAL"] == learned_tensors["sigmas_eval"].tolist()


def test_karras_ramp_inverts_the_formula():
    sig = discretize("logsnr", 7, EDM())
    ramp = torch.tensor(karras_ramp(sig.tolist(), 0.002, 80.0, 7.0), dtype=torch.float64)
    back = (80.0 ** (1 / 7) + ramp * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(back, sig, rtol=1e-13, atol=0)
    assert ramp[0] == 0.0 and math.copysign(1.0, float(ramp[0])) == 1.0 and abs(float(ramp[-1]) - 1) < 1e-14


def _vp_export(sched, name="time_quadratic", steps=6, jitter=0.01):
    sig = discretize(name, steps, sched)
    ev = sig * (1 + jitter * torch.linspace(-1, 1, steps + 1, dtype=torch.float64))
    return ExportSchedule("ld3", sig, ev, sched, "dpmpp", {"order": 2}, steps, "ddpm", "ddpm-0")


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_diffusers_vp_schedulers_and_integer_rounding(kind):
    pytest.importorskip("diffusers")
    sched = VPDiscrete.linear() if kind == "linear" else VPDiscrete.scaled_linear()
    es = _vp_export(sched)
    cfg = vp_beta_config(sched)
    assert cfg["beta_schedule"] == kind and cfg["num_train_timesteps"] == 1000
    text = diffusers_snippet(es)
    gap = es.decoupled_gap()
    assert gap == pytest.approx(0.01, rel=1e-9) and f"up to {gap:.3g} relative" in text  # the loss is stated
    ns = _exec(text)
    assert ns["SIGMAS_EVAL"] == es.sigmas_eval.tolist()
    euler = ns["scheduler"]
    assert type(euler).__name__ == "EulerDiscreteScheduler"
    assert torch.equal(euler.sigmas, es.sigmas.to(torch.float32))
    # diffusers' sigma -> timestep map (log-sigma interpolation between training steps) is our native time
    np.testing.assert_allclose(euler.timesteps.numpy(), es.t[:-1].numpy(), atol=5e-3)
    rep = integer_timesteps(es)
    dpm = ns["dpm_solver_scheduler"]()
    assert dpm.timesteps.tolist() == rep["timesteps"] == [round(v) for v in es.t[:-1].tolist()]
    np.testing.assert_allclose(dpm.sigmas[:-1].numpy(), rep["rounded_sigmas"], rtol=2e-5)  # float32 abar
    # float32 1 - abar_0 loses ~3 digits (abar_0 = 0.9999): compare loosely
    assert float(dpm.sigmas[-1]) == pytest.approx(rep["diffusers_final_sigma"], rel=1e-3)
    assert rep["diffusers_final_sigma"] == pytest.approx(float(es.sigmas[-1]), rel=1e-12)  # first_step = 0
    # the reported relative change is what diffusers actually does to the sigmas
    actual = (dpm.sigmas[:-1].double() / es.sigmas[:-1] - 1).abs()
    assert float(actual.max()) == pytest.approx(rep["max_rel_change"], rel=1e-3, abs=1e-6)
    assert 0 < rep["max_rel_change"] < 0.05 and int(actual.argmax()) == rep["argmax"]


def test_diffusers_vp_other_betas_and_merged_steps():
    pytest.importorskip("diffusers")
    from ld3_cli.models.diffusers import alphas_cumprod_from_config

    cos = VPDiscrete(alphas_cumprod_from_config({"beta_schedule": "squaredcos_cap_v2"}))
    assert vp_beta_config(cos) == {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
    betas = torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.05 + 0.01
    odd = VPDiscrete.from_betas(betas)
    cfg = vp_beta_config(odd)
    torch.testing.assert_close(torch.tensor(cfg["trained_betas"], dtype=torch.float64), betas, rtol=1e-10, atol=0)
    # two learned times that round to the same training step: DPM-Solver cannot take them
    sig = odd.sigma(torch.tensor([49.0, 20.2, 19.9, 0.0], dtype=torch.float64))
    es = ExportSchedule("ld3", sig, sig, odd, "euler", {"order": 1}, 3, "x", "x-0")
    rep = integer_timesteps(es)
    assert rep["merged"] == [(1, 2)]
    text = diffusers_snippet(es)
    assert "MERGES steps 1 and 2" in text and "DPMSolverMultistepScheduler" not in text.split('"""')[-1]
    ns = _exec(text)
    assert torch.equal(ns["scheduler"].sigmas, sig.to(torch.float32))
    np.testing.assert_allclose(ns["scheduler"].timesteps.numpy(), [49.0, 20.2, 19.9], atol=1e-3)


def test_flow_model_exports_flow_times():
    pytest.importorskip("diffusers")
    from ld3_cli.export import comfyui_json

    sched = FlowMatching()
    sig = discretize("logsnr", 4, sched)
    es = ExportSchedule("edm", sig, sig, sched, "euler", {"order": 1}, 4, "flow", "flow-0")
    ns = _exec(diffusers_snippet(es))
    fm = ns["scheduler"]
    assert type(fm).__name__ == "FlowMatchEulerDiscreteScheduler"
    t32 = (sig / (1 + sig)).to(torch.float32)
    torch.testing.assert_close(fm.sigmas, torch.cat([t32, torch.zeros(1)]), rtol=0, atol=1e-7)
    data = json.loads(comfyui_json(es))
    assert data["space"] == "flow_t"
    np.testing.assert_allclose(data["sigmas"], (sig / (1 + sig)).numpy(), rtol=1e-15)


def test_baseline_export_equals_discretize(learned_store, tmp_path):
    store, _ = learned_store
    ctx = make_ctx("export", store, ["schedule=edm", "export.format=[json,kdiffusion]", f"export.out={tmp_path}"])
    res = export_stage.run(ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kdiffusion_sigmas.py", "ld3_kdiffusion.py", "ld3_sampler.py",
                                                          "schedule.json"]
    data = load_schedule_json(tmp_path / "schedule.json")
    expected = discretize("edm", 5, ctx.model.schedule)
    assert data["sigmas"] == expected.tolist() == data["sigmas_eval"]
    assert data["schedule"] == "edm" and data["provenance"]["baseline"] == "edm"
    assert res["schedule"].decoupled_gap() == 0.0


def test_default_out_dir(learned_store, capsys):
    store, art = learned_store
    ctx = make_ctx("export", store, ["export.format=comfyui"])
    res = export_stage.run(ctx)
    expected = store / "exports" / ctx.model_key / f"ld3-unipc3-nfe5-{art.key}"
    assert res["out"] == expected and sorted(p.name for p in expected.iterdir()) == [
        "comfyui_ld3", "comfyui_sigmas.json", "comfyui_sigmas.txt", "comfyui_sigmas_to_zero.txt"]
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"export: {expected}"


def test_parse_formats():
    assert parse_formats("all") == ["json", "diffusers", "kdiffusion", "comfyui"]
    assert parse_formats("comfyui,json") == ["json", "comfyui"]
    assert parse_formats(["kdiffusion"]) == ["kdiffusion"]
    for bad in ("xml", ["json", "onnx"], ""):
        with pytest.raises(ConfigError, match="export.format"):
            parse_formats(bad)


def _learned_export(tmp_path, learned: bool):
    """An ExportSchedule of a UniPC schedule with decoupled times, state scales and (optionally) learned
    coefficients, written as JSON + ld3_sampler.py; returns (Sampler, record, the runner module's namespace)."""
    from ld3_cli.export import write_export
    from ld3_cli.ld3 import CoefficientParameterization
    from ld3_cli.ld3.parameterization import state_scales
    from ld3_cli.solvers import get_solver
    from ld3_cli.solvers.sampler import Sampler

    sched = VPDiscrete.linear(1000)
    sig = discretize("time_uniform", 5, sched)
    ev = sig * torch.tensor([1.0, 0.93, 1.05, 0.97, 1.02, 1.0], dtype=torch.float64)
    scales = state_scales("model", sched, sig, ev)
    base = get_solver("unipc").coefficients(sig, order=3)
    table = None
    if learned:
        coef = CoefficientParameterization.for_table(base)
        with torch.no_grad():
            coef.pred.fill_(0.2)
            coef.corr.fill_(-0.1)
        table = coef.apply(base)
    sampler = Sampler("unipc", sig, {"order": 3}, ev, scales, "eval", table)
    es = ExportSchedule(name="ld3", sigmas=sig, sigmas_eval=ev, noise_schedule=sched, solver="unipc",
                        solver_options={"order": 3}, nfe=5, model="m", model_key="m-1", eval_scales=scales,
                        coefficients=sampler.table(), learned_coefficients=learned)
    write_export(es, tmp_path, ["json", "diffusers", "kdiffusion", "comfyui"])
    ns = _exec((tmp_path / "ld3_sampler.py").read_text())
    return sampler, load_schedule_json(tmp_path / "schedule.json"), ns, es


def _denoiser(x, sigma, cond=None):
    return torch.tanh(x / (1.0 + sigma.view(-1, 1, 1, 1).to(x.dtype))) * 0.8


@pytest.mark.parametrize("learned", [False, True])
def test_ld3_sampler_py_runs_the_export_exactly_as_ld3(tmp_path, learned):
    """The small torch-only runner written beside schedule.json reproduces ld3's sampler bit for bit: the decoupled
    evaluation, the state scales and the (learned or own) coefficient table."""
    sampler, record, ns, _ = _learned_export(tmp_path, learned)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    assert record["learned_coefficients"] is learned and record["coefficients"]["form"] == "data"
    assert torch.equal(ns["sample"](_denoiser, x, record), sampler.solve(_denoiser, x))
    x32 = x.float()
    assert torch.equal(ns["sample"](_denoiser, x32, record), sampler.solve(_denoiser, x32))


def test_time_step_formats_say_what_they_drop_and_where_it_runs_exactly(tmp_path):
    _, _, _, es = _learned_export(tmp_path, True)
    for name, runner in (("diffusers_snippet.py", "LD3Scheduler"), ("kdiffusion_sigmas.py", "sample_ld3"),
                         ("comfyui_sigmas.json", "comfyui_ld3")):
        text = " ".join((tmp_path / name).read_text().replace("#", " ").split())
        assert "learned solver coefficients" in text and "state scales" in text, name
        assert "not for a stock sampler" in text and runner in text, name
