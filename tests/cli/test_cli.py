"""The ld3 dispatcher: stages, help, sugar flags, errors with exit 2, multirun, idempotence."""
import json

import pytest

from ld3_cli.cli.main import STAGES, main


def test_top_level_help_lists_every_stage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert f"  {stage}" in out
    assert "train-discretization" in out and "evaluate-fid" in out and "sample-student" in out


@pytest.mark.parametrize("stage", list(STAGES) + ["train-discretization", "sample-student", "evaluate-fid"])
def test_every_stage_has_hydra_help(stage, capsys):
    assert main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert "ld3 " in out
    assert "solver: " in out and "model: " in out  # the config groups are listed


def test_every_stage_row_names_its_module_and_config():
    """The stage table is the one list of stages: each row's module runs it and its config file composes it."""
    import importlib

    from ld3_cli.cli.apps import config_dir

    for stage in STAGES.values():
        assert callable(importlib.import_module(f"ld3_cli.stages.{stage.module}").run), stage
        assert (config_dir() / f"{stage.config}.yaml").is_file(), stage


def test_unknown_stage_is_exit_2_with_choices(capsys):
    assert main(["trian"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'trian'" in err and "did you mean 'train'" in err and "teacher-sample" in err


@pytest.mark.parametrize("args,needle", [
    (["solver=rk45"], "unknown solver 'rk45'; choose one of: deis, dpmpp, euler, heun, ipndm, k_dpmpp_2m, k_euler, "
                      "k_heun, unipc"),
    (["model=nope"], "mnist_gmm"),
    (["nfe=0"], "nfe must be at least 1"),
    (["solver=heun", "nfe=4"], "Heun needs an odd NFE"),
    (["solver=dpmpp", "solver.order=3", "nfe=2"], "needs at least 3 steps"),
    (["train.lrr=1"], "unknown config key 'train.lrr'"),
    (["foo=1"], "unknown config key 'foo'"),
    (["schedule=fancy"], "schedule 'fancy' is unknown"),
    (["--bogus"], "unknown option --bogus"),
    (["nfe=4,5"], "needs multirun: add -m"),
])
def test_bad_overrides_are_one_line_exit_2(args, needle, capsys, tmp_path):
    assert main(["train", *args, f"cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err, err
    assert err.startswith("ld3 train: error:") and "Traceback" not in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir()), "nothing may be written for a refused command"


def test_impossible_job_in_a_sweep_is_refused_before_any_job_runs(capsys, tmp_path):
    assert main(["train", "-m", "solver=euler,heun", "nfe=4,5", f"cache_dir={tmp_path}"]) == 2
    assert "Heun needs an odd NFE" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_sugar_flags_equal_overrides(capsys):
    assert main(["train", "--nfe", "7", "--solver", "dpmpp", "--cfg", "job"]) == 0
    a = capsys.readouterr().out
    assert main(["train", "nfe=7", "solver=dpmpp", "--cfg", "job"]) == 0
    b = capsys.readouterr().out
    assert a == b and "nfe: 7" in a and "name: dpmpp" in a


def test_missing_input_names_the_producing_command(ld3, capsys):
    assert ld3("train", "nfe=4") == 2
    err = capsys.readouterr().err
    assert "ld3 teacher-sample" in err


@pytest.mark.parametrize("stage, needs", [("eval", "`ld3 train nfe=5`"), ("train", "`ld3 teacher-sample nfe=5`"),
                                          ("sample", "`ld3 train nfe=5`")])
def test_a_missing_input_is_reported_before_any_model_is_built(stage, needs, tmp_path, monkeypatch, capsys):
    """On an empty store the error comes at once: no model is loaded or fitted, nothing but logs is written."""
    from ld3_cli.models import registry
    from ld3_cli.stages import context

    built = []
    monkeypatch.setattr(context, "_MODELS", {})  # no model left from another test in this process
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: built.append(a) or pytest.fail("model built"))
    store = tmp_path / "store"
    monkeypatch.setenv("LD3_CACHE", str(store))
    assert main([stage, "--nfe", "5"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"ld3 {stage}: error: ") and needs in err[0], err
    assert built == []
    written = {p.relative_to(store).parts[0] for p in store.rglob("*") if p.is_file()}
    assert written <= {"logs"}, written  # Hydra's job log only: no model fit, no artifact


def test_pipeline_multirun_and_idempotence(ld3, cache, capsys):
    assert ld3("teacher-sample") == 0
    assert ld3("train", "-m", "solver=euler,dpmpp", "nfe=4,5") == 0
    schedules = [p for p in cache.glob("mnist_gmm-*/schedules/*") if (p / "manifest.json").is_file()]
    assert len(schedules) == 4
    learned = [json.loads((p / "schedule.json").read_text()) for p in schedules]
    solvers_nfes = {(s["solver"], s["nfe"]) for s in learned}
    assert solvers_nfes == {("euler", 4), ("euler", 5), ("dpmpp", 4), ("dpmpp", 5)}
    stamps = {p: (p / "manifest.json").stat().st_mtime_ns for p in schedules}
    capsys.readouterr()
    assert ld3("train", "solver=euler", "nfe=4") == 0  # a second identical run recomputes nothing
    assert "already trained" in capsys.readouterr().out
    assert stamps == {p: (p / "manifest.json").stat().st_mtime_ns for p in schedules}
    assert ld3("eval", "--nfe", "4", "--solver", "euler") == 0
    out = capsys.readouterr().out
    assert "ld3 | 4" in out and "logsnr | 4" in out
    assert (cache / "results.csv").is_file() and (cache / "results.md").is_file()
    import csv

    rows = list(csv.DictReader((cache / "results.csv").open()))
    sample_n = next(r["n"] for r in rows if r["metric"] == "fd_exact")
    for r in rows:  # n = the samples behind each value; the learned rows name their schedule and loss
        held = r["metric"] in ("rmse", "psnr")
        assert r["n"] == (rows_heldout_n(cache) if held else sample_n), r
        assert (r["loss"], bool(r["schedule_key"])) == (("l2", True) if r["schedule"] == "ld3" else ("", False)), r
    learned_key = next(r["schedule_key"] for r in rows if r["schedule"] == "ld3")
    assert any(p.name == learned_key for p in schedules)
    assert "| loss |" in (cache / "results.md").read_text()

    _check_noise_floor(out, cache)


def rows_heldout_n(cache) -> str:
    """The held-out teacher size eval used (its artifact's n)."""
    held = [json.loads((p / "manifest.json").read_text()) for p in cache.glob("mnist_gmm-*/teacher/*")
            if (p / "manifest.json").is_file()]
    return str(next(m["config"]["n"] for m in held if m["config"]["seed_start"] != 0))


def _check_noise_floor(out: str, cache):
    """The line under the table: fd_exact / fd_data of n exact samples drawn apart from the reference set
    (recomputed here), the teacher's own error; fd_data is not starred."""
    import re

    from ld3_cli.metrics import frechet_distance
    from ld3_cli.data.seeds import SEED_SHIFTS
    from ld3_cli.metrics.pixel_fd import exact_sample_images, pixel_statistics
    from ld3_cli.models.mnist_gmm import GaussianMixtureDenoiser, load_or_fit
    from ld3_cli.store import Store

    line = next(ln for ln in out.splitlines() if ln.startswith("noise floor at n = 40 "))
    got = dict(re.findall(r"(fd_exact|fd_data|rmse) ([0-9.e+-]+)", line))
    model = GaussianMixtureDenoiser(load_or_fit(128, Store(cache).fit_cache()))
    floor = pixel_statistics(exact_sample_images(model, 40, 0, SEED_SHIFTS.noise_floor))[:2]
    ref = pixel_statistics(exact_sample_images(model, 64, 0))[:2]
    assert float(got["fd_exact"]) == pytest.approx(frechet_distance(*floor, *ref), abs=0.006)
    assert float(got["fd_data"]) > 0 and 0 < float(got["rmse"]) < 0.05
    rows = [ln.split(" | ") for ln in out.splitlines() if ln.endswith(tuple("0123456789*")) and " | 4 | " in ln]
    assert rows and all(not r[3].endswith("*") for r in rows)  # fd_data (4th column) is never starred
    assert any(r[2].endswith("*") for r in rows)


def test_user_target_model_runs_through_ld3_run(ld3, cache, capsys):
    """README 'Your own model': any Denoiser subclass via model._target_ runs the whole pipeline."""
    assert ld3("run", "model=custom", "model._target_=ld3_cli.models.examples.GaussianDenoiser", "+model.std=0.3",
               "eval.compare=[ld3,edm]") == 0
    out = capsys.readouterr().out
    assert "ld3 | 5" in out and "edm | 5" in out
    assert list(cache.glob("custom-*/schedules/*/schedule.json"))
