"""scripts/repro.py, scripts/results_table.py, the repro Makefile targets and the generated config reference."""
import csv
import re
import sys

import pytest
from docs_testlib import make_dry_run, REPO

sys.path.insert(0, str(REPO / "scripts"))
import gen_config_reference  # noqa: E402
import repro  # noqa: E402
import results_table  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


# -- the generated config reference ---------------------------------------------------------------
def test_config_reference_is_up_to_date():
    committed = (REPO / "docs" / "config-reference.md").read_text()
    assert committed == gen_config_reference.render(), \
        "docs/config-reference.md is stale: run python scripts/gen_config_reference.py"


def test_config_reference_lists_every_setting_with_its_default():
    import yaml

    text = (REPO / "docs" / "config-reference.md").read_text()
    train = yaml.safe_load((REPO / "configs" / "train" / "default.yaml").read_text())
    for key, value in train.items():
        row = re.search(rf"^\| `train\.{key}` \| (.+?) \| (.*) \|$", text, re.M)
        assert row, key
        assert row.group(1) == gen_config_reference._fmt(value)
    for f in sorted((REPO / "configs" / "model").glob("*.yaml")):
        assert f"### `model={f.stem}`" in text
    assert "| `nfe` | `5` | Number of network evaluations of the student sampler. |" in text


def test_generator_reads_comments_nesting_and_block_scalars(tmp_path):
    (tmp_path / "base.yaml").write_text("# What this file is.\n# Second line.\n\ndefaults:\n  - g: a\n  - _self_\n"
                                        "# Doc of x,\n# two lines.\nx: 1\ny: [1, 2]   # trailing doc\n"
                                        "hydra:\n  help:\n    footer: |-\n      x: not a key\n"
                                        "sect:\n  # inner doc\n  inner: null\n  deep:\n    leaf: 'a # b'\n")
    cf = gen_config_reference.read_config(tmp_path / "base.yaml")
    assert cf.header == "What this file is.\nSecond line."
    got = {e.key: (e.value, e.doc) for e in cf.entries}
    assert got == {"x": (1, "Doc of x, two lines."), "y": ([1, 2], "trailing doc"), "sect.inner": (None, "inner doc"),
                   "sect.deep.leaf": ("a # b", "")}
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.yaml").write_text("# Member a.\nk: v\n")
    page = gen_config_reference.render(tmp_path)
    assert "| `x` | `1` | Doc of x, two lines. |" in page and "`[1, 2]`" in page


def test_gen_config_reference_check_flags_a_stale_file(tmp_path, capsys):
    out = tmp_path / "ref.md"
    assert gen_config_reference.main(["--out", str(out)]) == 0
    assert gen_config_reference.main(["--check", "--out", str(out)]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert gen_config_reference.main(["--check", "--out", str(out)]) == 1
    assert "out of date" in capsys.readouterr().err


# -- the Makefile targets -------------------------------------------------------------------------
@pytest.mark.parametrize("setup", ["mnist", "cifar10", "ffhq", "afhqv2", "lsun", "imagenet", "sd15"])
def test_make_repro_target_runs_the_setup(setup):
    assert setup in repro.SETUPS
    recipe = make_dry_run(f"repro-{setup}", "REPRO_ARGS=--nfe 4,6")
    assert re.search(rf"scripts/repro\.py {setup} --nfe 4,6$", recipe, re.M), recipe


# -- repro.py: files first --------------------------------------------------------------------------
@pytest.fixture
def empty_env(tmp_path, monkeypatch):
    for name in ("weights", "refs", "data", "torch"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("LD3_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("LD3_REFS", str(tmp_path / "refs"))
    monkeypatch.setenv("LD3_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.chdir(tmp_path)

    def no_subprocess(*a, **k):
        raise AssertionError("repro.py started a command although files are missing")

    monkeypatch.setattr(repro.subprocess, "call", no_subprocess)
    return tmp_path


def test_missing_files_stop_repro_before_any_work(empty_env, capsys):
    cache = empty_env / "cache"
    assert repro.main(["cifar10", "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "4 file(s) missing -- nothing was run" in err
    assert f"{empty_env}/weights/edm-cifar10-32x32-uncond-vp.pkl" in err
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl" in err
    assert f"{empty_env}/refs/cifar10-32x32.npz" in err
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz" in err
    assert f"{empty_env}/torch/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth" in err
    # the paper's LPIPS loss is a required file too (never replaced by L2 behind the user's back)
    assert f"{empty_env}/torch/hub/checkpoints/vgg16-397923af.pth" in err and "train.loss=l2" in err
    assert "make repro-cifar10" in err
    assert not cache.exists()
    # once the files exist (content is not checked here), the check passes
    (empty_env / "weights" / "edm-cifar10-32x32-uncond-vp.pkl").write_bytes(b"x")
    (empty_env / "refs" / "cifar10-32x32.npz").write_bytes(b"x")
    (empty_env / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    (empty_env / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"x")
    assert repro.main(["cifar10", "--check"]) == 2  # LPIPS' backbone is still missing
    (empty_env / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth").write_bytes(b"x")
    assert repro.main(["cifar10", "--check"]) == 0


def test_sd15_lists_prompts_and_how_to_make_statistics(empty_env, capsys):
    assert repro.main(["sd15", "--check"]) == 2
    err = capsys.readouterr().err
    assert "5 file(s) missing" in err
    assert f"{empty_env}/data/coco/annotations/captions_val2014.json" in err
    assert "ld3 fid-ref dataset=coco" in err and f"{empty_env}/weights/stable-diffusion-v1-5" in err


def test_mnist_needs_only_the_ddpm_weights(empty_env, capsys):
    assert repro.main(["mnist", "--check"]) == 2
    err = capsys.readouterr().err
    assert "1 file(s) missing" in err and "ddpm_mnist_starter.pth" in err
    assert "https://github.com/Yichizz/hot_vs_cold_diffusion/raw/b16db75/model/ddpm_mnist_starter.pth" in err


def test_heun_is_refused(capsys):
    assert repro.main(["mnist", "--solvers", "heun,dpmpp", "--dry-run"]) == 2
    assert "odd NFE" in capsys.readouterr().err


def test_overrides_after_double_dash_follow_options(empty_env, capsys):
    """The documented form `repro.py cifar10 --nfe 4,6 -- sample.n=10000` reaches every command."""
    assert repro.main(["cifar10", "--nfe", "4,6", "--solvers", "unipc", "--dry-run", "--", "sample.n=10000"]) == 0
    plan = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("ld3 ")]
    assert plan and all("sample.n=10000" in ln for ln in plan), plan
    assert all("nfe=4,6" in ln for ln in plan if " -m " in ln), plan


# -- repro.py: the plan ---------------------------------------------------------------------------
def _doc_block_after(marker: str) -> list[str]:
    text = (REPO / "docs" / "reproduction.md").read_text()
    for block in re.findall(r"```\w*\n(.*?)```", text[text.index(marker):], re.S):
        lines = [ln for ln in block.splitlines() if ln.startswith("ld3 ")]
        if lines:  # the first code block after the marker that holds ld3 commands
            return lines
    return []


def _plan(setup: str) -> list[str]:
    s = repro.SETUPS[setup]
    return [repro.show(c).replace("'", "") for run in s.runs
            for c in repro.commands(s, run, s.nfes, s.solvers, [], None)]


@pytest.mark.parametrize("setup,marker", [("cifar10", "To see the plan without running anything"),
                                          ("mnist", "`make repro-mnist` runs these commands")])
def test_documented_plans_are_what_repro_runs(setup, marker):
    """docs/reproduction.md shows these plans verbatim; test_doc_commands.py checks each composes."""
    assert _doc_block_after(marker) == _plan(setup)


def test_plans_sweep_the_paper_grid():
    for name, s in repro.SETUPS.items():
        plan = _plan(name)
        assert plan[0].startswith("ld3 teacher-sample ")
        trains = [p for p in plan if p.startswith("ld3 train -m ")]
        evals = [p for p in plan if p.startswith("ld3 eval -m ")]
        assert len(trains) == len(evals) >= len(s.runs)
        swept = set()
        for p in trains:
            swept |= set(re.search(r"solver=([\w,]+)", p).group(1).split(","))
            assert ("nfe=" + ",".join(map(str, s.nfes))) in p
        assert swept == {"dpmpp", "unipc", "ipndm"}, name
        if name != "mnist":
            assert s.nfes == (4, 5, 6, 7, 8, 9, 10)
    cifar = _plan("cifar10")
    # the paper's settings come from the experiment config, never retyped as overrides in the plan
    assert all("experiment=cifar10_paper" in p.split() for p in cifar)
    assert not any("variant=" in p for p in cifar)


@pytest.mark.slow
@pytest.mark.parametrize("setup", sorted(repro.SETUPS))
def test_every_setup_plan_passes_preflight(setup):
    """(slow: many composes) the documented cifar10 / mnist plans are covered by test_doc_commands.py."""
    from ld3_cli.cli.main import STAGES
    from ld3_cli.cli.preflight import check_overrides

    s = repro.SETUPS[setup]
    for run in s.runs:
        for c in repro.commands(s, run, s.nfes, s.solvers, [], None):
            assert check_overrides(STAGES[c[0]].config, [a for a in c[1:] if a != "-m"], "-m" in c,
                                   files=False) is None, c


# -- results_table.py -----------------------------------------------------------------------------
def _write_results(path, rows):
    cols = ["date", "model", "dataset", "solver", "order", "nfe", "schedule", "metric", "value", "n"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({"date": "2026-01-02 10:00", "model": "edm-cifar10", "dataset": "cifar10", "order": 3,
                        "n": 50000, **r})


def test_results_table_puts_published_numbers_beside_measured(tmp_path):
    rows = [dict(solver="dpmpp", nfe=4, schedule="ld3", metric="fid", value=99.0),   # older row: superseded
            dict(solver="dpmpp", nfe=4, schedule="ld3", metric="fid", value=10.5),
            dict(solver="dpmpp", nfe=4, schedule="edm", metric="fid", value=47.0),
            dict(solver="unipc", nfe=4, schedule="ld3", metric="fid", value=9.5),
            dict(solver="unipc", nfe=4, schedule="gits", metric="fid", value=26.0),
            dict(solver="unipc", nfe=6, schedule="ld3", metric="fid", value=3.4),
            dict(solver="unipc", nfe=4, schedule="ld3", metric="rmse", value=0.05),
            dict(solver="dpmpp", nfe=4, schedule="ld3", metric="fid", value=1.0, model="other-model")]
    _write_results(tmp_path / "results.csv", rows)
    md = results_table.report(tmp_path, model="edm-cifar10", published_key="cifar10", default_schedule="edm",
                              plot=tmp_path / "p.png")
    lines = {tuple(c.strip() for c in ln.strip("|").split("|")[:2]): ln
             for ln in md.splitlines() if ln.startswith("| ")}
    head = lines[("solver", "schedule")]
    assert "NFE 4" in head and "NFE 6" in head and "NFE 10" in head  # published columns too
    assert "| 10.50 | 47.00 / 46.59 |" not in md  # cells are per row
    assert lines[("dpmpp", "ld3")].split("|")[3].strip() == "10.50"               # newest row wins, no published
    assert lines[("dpmpp", "edm")].split("|")[3].strip() == "47.00 / 46.59"       # paper 'default' beside edm
    assert lines[("unipc", "gits")].split("|")[3].strip() == "26.00 / 25.32"
    assert lines[("unipc", "ld3")].split("|")[3].strip() == "**9.50**"            # best measured at NFE 4
    assert lines[("best ld3", "ld3")].split("|")[3].strip() == "9.50 / 9.31"      # min over solvers vs best_ld3
    assert lines[("best ld3", "ld3")].split("|")[6].strip() == "- / 2.38"         # NFE 10 published only
    assert lines[("unipc", "dmn")].split("|")[3].strip() == "- / 26.35"           # published row, not measured
    assert "Published 'default' baselines are shown beside our `edm` row." in md
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_results_table_cli_without_published(tmp_path, capsys):
    rows = [dict(solver=s, nfe=n, schedule=k, metric="fd_exact", value=v, model="mnist_gmm", dataset="mnist5k")
            for s, n, k, v in [("dpmpp", 4, "ld3", 3.0), ("dpmpp", 4, "edm", 9.0), ("dpmpp", 5, "ld3", 2.0),
                               ("ipndm", 4, "ld3", 2.5)]]
    _write_results(tmp_path / "results.csv", rows)
    out = tmp_path / "t.md"
    assert results_table.main(["--cache", str(tmp_path), "--out", str(out)]) == 0
    md = out.read_text()
    assert md.strip() in capsys.readouterr().out
    assert "`fd_exact`, n = 50000 samples; lower is better" in md
    assert "| dpmpp | ld3 | 3.00 | **2.00** |" in md and "| ipndm | ld3 | **2.50** | - |" in md
    assert "| dpmpp | edm | 9.00 | - |" in md
    assert "best ld3" not in md and not any(" / " in ln for ln in md.splitlines() if ln.startswith("| "))


def test_results_table_splits_a_solver_run_at_several_orders(tmp_path):
    rows = [dict(solver="dpmpp", order=o, nfe=4, schedule=k, metric="rmse", value=v, model="m", dataset="d")
            for o, k, v in [(2, "ld3", 0.10), (2, "edm", 0.20), (3, "ld3", 0.12), (3, "edm", 0.15)]]
    rows.append(dict(solver="unipc", order=3, nfe=4, schedule="ld3", metric="rmse", value=0.11, model="m", dataset="d"))
    _write_results(tmp_path / "results.csv", rows)
    md = results_table.report(tmp_path, model="m", solvers=["dpmpp"])
    assert "| dpmpp (order 2) | ld3 | **0.1000** |" in md and "| dpmpp (order 2) | edm | 0.2000 |" in md
    assert "| dpmpp (order 3) | ld3 | 0.1200 |" in md and "| dpmpp (order 3) | edm | 0.1500 |" in md
    assert "unipc" not in md  # filtered by the base solver name
    assert "| unipc | ld3 | 0.1100 |" in results_table.report(tmp_path, model="m")  # one order: plain name


def test_published_csv_is_the_reference_copy():
    ours = results_table.read_csv(results_table.PUBLISHED)
    ref = REPO.parent / "shared" / "reference" / "published_fid.csv"
    assert len(ours) == 160
    assert {r["dataset"] for r in ours} == {"cifar10", "ffhq64", "afhqv2_64", "lsun_bedroom256", "imagenet256"}
    best = {(r["dataset"], int(r["nfe"])): float(r["fid"]) for r in ours if r["method"] == "best_ld3"}
    assert best[("cifar10", 10)] == 2.38 and best[("afhqv2_64", 10)] == 2.27  # the abstract's numbers
    if ref.is_file():
        assert ours == results_table.read_csv(ref)


# -- learned_solver_grid.py -----------------------------------------------------------------------
def _grid_script():
    """scripts/learned_solver_grid.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ld3_grid_script", REPO / "scripts" / "learned_solver_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    return grid


def test_learned_solver_grid_runs_a_cell_and_renders_it(tmp_path, fitted_cache):
    """One tiny cell end to end: LD3 and the learned solver + steps from one run, the coefficients-only run, the
    baselines; LD3 is exactly the phase-2 result of that run, and the table reports the cell."""
    import json
    import shutil

    grid = _grid_script()
    shutil.copytree(fitted_cache, tmp_path / "c")
    out = tmp_path / "g.jsonl"
    args = ["mnist_gmm", "--solvers", "unipc:3", "--nfe", "3", "--pairs", "16", "--heldout", "12", "--out", str(out),
            "--", f"cache_dir={tmp_path / 'c'}", "train.iters_phase1=2", "train.iters_phase2=2", "train.iters_phase3=3",
            "teacher.nfe=12", "teacher.check_n=0"]
    assert grid.main(args) == 0
    rec = json.loads(out.read_text())
    assert set(rec["baselines"]) == set(grid.BASELINES) and rec["pairs"] == 16 and rec["heldout"] == 12
    assert rec["learned_steps"]["val"] <= rec["ld3"]["val"]  # phase 3 can only keep or lower validation
    assert rec["time"]["wall"] >= rec["time"]["ld3_wall"] > 0
    assert all(k in rec[name] for name in ("ld3", "learned", "learned_steps") for k in ("rmse", "fd_exact"))
    table = grid.render([rec])
    assert "| unipc-3 | 3 |" in table and "Geometric mean" in table
    # --jobs: each cell in its own process, the teacher pairs made once first; a cell is what a sequential run gives
    par = tmp_path / "par.jsonl"
    overrides = args[args.index("--"):]
    assert grid.main(["mnist_gmm", "--solvers", "unipc:3,dpmpp:2", "--nfe", "3", "--pairs", "16", "--heldout", "12",
                      "--out", str(par), "--jobs", "2", *overrides]) == 0
    got = {r["solver"]: r for r in map(json.loads, par.read_text().splitlines())}
    assert set(got) == {"unipc", "dpmpp"}
    assert all(got["unipc"][k]["rmse"] == rec[k]["rmse"] for k in ("ld3", "learned", "learned_steps"))


def test_learned_solver_grid_reports_the_residual_operator_when_learned(tmp_path, fitted_cache):
    """With ``residual`` in train.learn the cell's run goes on to phase 4: + steps is phase 3's result, + residual the
    run's (never worse on validation), and the table gets a "+ residual" column."""
    import json
    import shutil

    grid = _grid_script()
    shutil.copytree(fitted_cache, tmp_path / "c")
    out = tmp_path / "g.jsonl"
    assert grid.main(["mnist_gmm", "--solvers", "ipndm:3", "--nfe", "3", "--pairs", "16", "--heldout", "12", "--out",
                      str(out), "--no-alone", "--", f"cache_dir={tmp_path / 'c'}", "train.iters_phase1=2",
                      "train.iters_phase2=2", "train.iters_phase3=3", "train.iters_residual=6",
                      "train.val_every_residual=2", "train.learn=[steps,offsets,coefficients,residual]",
                      "teacher.nfe=12", "teacher.check_n=0"]) == 0
    rec = json.loads(out.read_text())
    assert rec["residual"]["val"] <= rec["learned_steps"]["val"] <= rec["ld3"]["val"]
    assert "learned" not in rec and "+ residual" in grid.render([rec]).splitlines()[2]


def test_learned_solver_grid_takes_the_preset_an_override_names(tmp_path):
    """`-- train=learned_solver_guided` replaces the grid's own `train=learned_solver` (not an error of two values)."""
    grid = _grid_script()
    place = f"cache_dir={tmp_path}"
    plain = grid.context("mnist_gmm", "dpmpp", 2, 4, 16, [place]).cfg
    guided = grid.context("mnist_gmm", "dpmpp", 2, 4, 16, ["train=learned_solver_guided", place]).cfg
    assert plain.solver.analytic_first is True and plain.train.loss == "auto"
    assert guided.solver.analytic_first is False and guided.train.loss == "pseudo_huber"
    assert guided.train.learn == plain.train.learn and guided.teacher.n == 16


def test_learned_solver_grid_summarises_grids(tmp_path, capsys):
    """--summary: one row per grid with the geometric mean, worst cell, cells > 2 % worse, validation ratio,
    fd_exact count and time range, from the records alone (closed-form values)."""
    import json

    grid = _grid_script()

    def rec(nfe, ld3, ours, fd=(1.0, 1.0), t=(10.0, 15.0)):
        return {"model": "mnist_gmm", "solver": "dpmpp", "order": 2, "nfe": nfe, "extra": ["train.seed=1"],
                "ld3": {"rmse": ld3, "val": ld3 ** 2, "fd_exact": fd[0]},
                "learned_steps": {"rmse": ours, "val": ours ** 2, "fd_exact": fd[1]},
                "time": {"ld3_wall": t[0], "wall": t[1]}}

    path = tmp_path / "seed1.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (rec(3, 0.1, 0.08), rec(4, 0.1, 0.05, (1.0, 1.5), (10.0, 19.0)),
                                                        rec(5, 0.1, 0.103))) + "\n")
    assert grid.main(["--summary", str(path)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    gm = (0.8 * 0.5 * 1.03) ** (1 / 3)
    assert row == (f"| seed1.jsonl | train.seed=1 | 3 | {gm:.3f} | 1.030 (dpmpp-2 NFE 5) | 1 | {gm ** 2:.3f} | 1 | "
                   "1.50-1.90x |")


def test_learned_solver_grid_names_the_settings_that_differ():
    """Cells that differ in their overrides (a guidance grid) get a settings column; places (cache_dir) do not."""
    grid = _grid_script()

    def rec(w, ld3, ours):
        return {"model": "mnist_gmm", "solver": "dpmpp", "order": 2, "nfe": 6, "pairs": 100, "heldout": 500,
                "extra": ["model.conditional=true", f"model.guidance_scale={w}", "cache_dir=/tmp/x"],
                "baselines": {"logsnr": {"rmse": 0.3}}, "ld3": {"rmse": ld3}, "learned": {"rmse": 0.2},
                "learned_steps": {"rmse": ours}, "time": {"ld3_wall": 10.0, "wall": 25.0}}

    table = grid.render([rec(7.5, 0.06, 0.045), rec(2, 0.02, 0.01)])
    lines = table.splitlines()
    assert lines[2].startswith("| settings | solver | NFE |") and "cache_dir" not in table
    rows = [ln for ln in lines if ln.startswith("| model.")]
    assert [r.split(" | ")[0] for r in rows] == ["| model.conditional=true model.guidance_scale=2",
                                                 "| model.conditional=true model.guidance_scale=7.5"]
    assert "0.750" in rows[1] and "0.500" in rows[0]
    assert "settings" not in grid.render([rec(7.5, 0.06, 0.045)])


def test_learned_solver_grid_without_the_solver_alone():
    """--no-alone records no coefficients-only run: its column shows '-', the lower of the two others is bold."""
    grid = _grid_script()
    rec = {"model": "edm_cifar10_random", "solver": "unipc", "order": 3, "nfe": 10, "pairs": 1000, "heldout": 100,
           "extra": [], "baselines": {"logsnr": {"rmse": 0.3}}, "ld3": {"rmse": 0.2}, "learned_steps": {"rmse": 0.15},
           "time": {"ld3_wall": 100.0, "wall": 150.0}}
    row = [ln for ln in grid.render([rec]).splitlines() if ln.startswith("| unipc-3")][0]
    assert row.split(" | ")[3:7] == ["0.2000", "-", "**0.1500**", "0.750"], row
    assert "100 / 150 (1.50x)" in row
