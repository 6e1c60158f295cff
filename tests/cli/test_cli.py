"""The ld3 dispatcher: stages, help, sugar flags, errors with exit 2, multirun, idempotence."""
import json
from pathlib import Path

import pytest

from ld3_cli.cli.main import STAGES, main

REPO = Path(__file__).resolve().parents[2]


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
    (["solver=rk45"], "unknown solver 'rk45'"),
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


def test_an_unknown_solver_lists_every_solver_config(capsys, tmp_path):
    """The choices named are exactly the solver configs (configs/solver/*.yaml), whatever their number."""
    from ld3_cli.cli.apps import config_dir

    assert main(["train", "solver=rk45", f"cache_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    offered = err.split("choose one of:", 1)[1].strip().rstrip(".").split(", ")
    assert sorted(offered) == sorted(p.stem for p in (config_dir() / "solver").glob("*.yaml")), err


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


def test_every_sugar_flag_is_documented_in_the_help_and_the_readme(capsys):
    """Each flag of SUGAR, with the override it stands for, in `ld3 <stage> --help`'s footer and the README."""
    from ld3_cli.cli.main import SUGAR

    assert main(["train", "--help"]) == 0
    footer = " ".join(capsys.readouterr().out.split("Sugar:", 1)[1].split())
    readme = " ".join((REPO / "README.md").read_text().split())
    for flag, key in SUGAR.items():
        assert f"{flag} " in footer and f" {key}=" in footer, flag
        assert f"`{flag} " in readme and f"`{key}=" in readme, flag


def test_missing_input_names_the_producing_command(ld3, capsys):
    assert ld3("train", "nfe=4") == 2
    err = capsys.readouterr().err
    assert "ld3 teacher-sample" in err


@pytest.mark.parametrize("stage, needs", [("eval", "`ld3 train nfe=5`"), ("train", "`ld3 teacher-sample nfe=5`"),
                                          ("sample", "`ld3 train nfe=5`")])
def test_a_missing_input_is_reported_before_any_model_is_built(stage, needs, tmp_path, monkeypatch, capsys):
    """On an empty store the error comes at once: no model is loaded or fitted, nothing but logs is written."""
    from ld3_cli.models import registry

    built = []
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: built.append(a) or pytest.fail("model built"))
    store = tmp_path / "store"
    monkeypatch.setenv("LD3_CACHE", str(store))
    assert main([stage, "--nfe", "5"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"ld3 {stage}: error: ") and needs in err[0], err
    assert built == []
    written = {p.relative_to(store).parts[0] for p in store.rglob("*") if p.is_file()}
    assert written <= {"logs"}, written  # Hydra's job log only: no model fit, no artifact


def test_pipeline_multirun_and_idempotence(ld3, cache, capsys, monkeypatch):
    from ld3_cli.models import registry

    builds = []
    real_build = registry.build_model
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    assert ld3("teacher-sample") == 0
    assert len(builds) == 1
    assert ld3("train", "-m", "solver=euler,dpmpp", "nfe=4,5") == 0
    assert len(builds) == 2  # each command loads the model once: the four jobs of the sweep share it
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
    table = printed_table(out)
    assert {r["schedule"] for r in table} >= {"ld3", "logsnr"} and {r["NFE"] for r in table} == {"4"}
    assert (cache / "results.csv").is_file() and (cache / "results.md").is_file()
    import csv

    rows = list(csv.DictReader((cache / "results.csv").open()))
    sample_n = next(r["n"] for r in rows if r["metric"] == "fd_exact")
    for r in rows:  # n = the samples behind each value; the learned rows name their schedule and loss
        held = r["metric"] in ("rmse", "psnr")
        assert r["n"] == (rows_heldout_n(cache) if held else sample_n), r
        assert (r["loss"], bool(r["schedule_key"])) == (("l2", True) if r["schedule"] == "ld3" else ("", False)), r
        trained = r["schedule"] == "ld3"  # what tells trainings apart: the seed, what was learned, the model
        assert (r["train_seed"], r["learn"]) == (("0", "steps,offsets") if trained else ("", "")), r
        assert r["model_key"].startswith("mnist_gmm-"), r
    learned_key = next(r["schedule_key"] for r in rows if r["schedule"] == "ld3")
    assert any(p.name == learned_key for p in schedules)
    md = [ln.strip("|").split("|") for ln in (cache / "results.md").read_text().splitlines()]
    header = [c.strip() for c in md[0]]
    assert "loss" in header and len(md) == len(rows) + 2  # a header, the |---| line, one line per csv row
    assert {md[i + 2][header.index("loss")].strip() for i, r in enumerate(rows) if r["schedule"] == "ld3"} == {"l2"}

    _check_noise_floor(out, cache)


def printed_table(out: str) -> list[dict]:
    """The rows of the table ``ld3 eval`` printed (``schedule | NFE | <metrics>``), as dicts of cell strings."""
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("schedule | NFE | "))
    header = lines[start].split(" | ")
    assert set(lines[start + 1].split(" | ")) == {"---"}
    rows = []
    for ln in lines[start + 2:]:
        cells = ln.split(" | ")
        if len(cells) != len(header):
            break
        rows.append(dict(zip(header, cells)))
    assert rows, out
    return rows


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
    rows = printed_table(out)
    assert all(not r["fd_data"].endswith("*") for r in rows)  # fd_data is never starred
    starred = [r for r in rows if r["fd_exact"].endswith("*")]  # the lowest fd_exact, and only it
    assert len(starred) >= 1 and all(float(r["fd_exact"].rstrip(" *")) == min(float(q["fd_exact"].rstrip(" *"))
                                                                             for q in rows) for r in starred)


def test_user_target_model_runs_through_ld3_run(ld3, cache, capsys, monkeypatch):
    """README 'Your own model': any Denoiser subclass via model._target_ runs the whole pipeline, which builds the
    model once for its four steps."""
    from ld3_cli.models import registry

    builds = []
    real_build = registry.build_model
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: builds.append(a) or real_build(*a, **k))
    assert ld3("run", "model=custom", "model._target_=ld3_cli.models.examples.GaussianDenoiser", "+model.std=0.3",
               "eval.compare=[ld3,edm]") == 0
    out = capsys.readouterr().out
    table = printed_table(out)
    assert [r["schedule"] for r in table] == ["ld3", "edm"] and {r["NFE"] for r in table} == {"5"}
    assert len(builds) == 1
    assert list(cache.glob("custom-*/schedules/*/schedule.json"))


def test_run_lists_only_the_artifacts_it_made(ld3, cache, capsys):
    """`ld3 run` without ld3 in eval.compare samples only the compared schedules and lists no learned samples."""
    assert ld3("run", "eval.compare=[edm]") == 0
    out = capsys.readouterr().out
    listed = out[out.index("\nartifacts:\n"):].splitlines()
    assert not [ln for ln in listed if ln.split()[:1] == ["samples"]], listed
    made = [json.loads((p / "manifest.json").read_text())["info"]["schedule"]
            for p in cache.glob("mnist_gmm-*/samples/*") if (p / "manifest.json").is_file()]
    assert made == ["edm"]
    paths = [ln.split()[1] for ln in listed if ln.startswith("  ")]
    assert paths and all(Path(p).exists() for p in paths), listed


def test_a_learned_rows_schedule_name_says_what_was_learned():
    from ld3_cli.store.results import learned_schedule_name

    assert learned_schedule_name(["steps", "offsets"]) == "ld3"
    assert learned_schedule_name(("steps", "offsets", "coefficients")) == "ld3[steps,offsets,coefficients]"
    assert learned_schedule_name(["steps"]) == "ld3[steps]"
