"""Every command in README.md and docs/*.md is exercised.

* each ``ld3 ...`` command composes and passes the preflight checks (every job of a sweep), and a
  plain one prints its composed config with ``--cfg job`` (exit 0);
* the cheap ones (embedded default model, no sweep) run for real, in doc order, in a temporary
  store with tiny budgets appended (prerequisite stages run first), and leave their artifacts;
* each ``make <target>`` names a Makefile target, each ``python scripts/X.py`` an existing script.

Commands that need the example solver of docs/extending.md run in tests/docs/test_extending.py.
"""
import csv
import math
import re

import pytest
from docs_testlib import REPO, commands, is_cheap, make_dry_run, split_ld3

from ld3_cli.cli.main import STAGES, main, resolve_stage
from ld3_cli.cli.preflight import check_overrides

ALL = commands()
EXTENSION_ONLY = re.compile(r"solver=dpm2\b")
LD3 = [c for c in ALL if c.kind == "ld3" and not EXTENSION_ONLY.search(c.text)]
CHEAP = [c for c in LD3 if is_cheap(c)]


def test_the_docs_are_found_and_hold_commands():
    docs = {c.doc for c in ALL}
    for name in ("README.md", "docs/concepts.md", "docs/solvers.md", "docs/extending.md", "docs/reproduction.md"):
        assert (REPO / name).is_file(), name
    assert "README.md" in docs and "docs/reproduction.md" in docs and "docs/solvers.md" in docs
    readme = [c for c in LD3 if c.doc == "README.md"]
    assert len(readme) >= 10, [str(c) for c in readme]
    stages = {resolve_stage(c.argv[0]) for c in LD3}
    assert {"run", "teacher-sample", "train", "eval", "sample", "export"} <= stages
    assert len(CHEAP) >= 8, [str(c) for c in CHEAP]


@pytest.mark.parametrize("cmd", LD3, ids=[f"{c.doc}:{' '.join(c.argv)[:60]}" for c in LD3])
def test_ld3_command_composes_and_passes_preflight(cmd, capsys):
    stage_word, flags, overrides, multirun = split_ld3(cmd.argv)
    stage = resolve_stage(stage_word)
    assert stage is not None, f"{cmd}: unknown stage"
    if {"--help", "-h"} & set(flags):
        assert main(list(cmd.argv)) == 0
        assert "ld3 " in capsys.readouterr().out
        return
    if multirun or "--cfg" in flags:  # values checked; the files a run needs (LPIPS weights) are the reader's
        err = check_overrides(STAGES[stage].config, [_ends_of_nfe_sweep(o) for o in overrides], multirun=multirun,
                              files=False)
        assert err is None, f"{cmd}: {err}"
        return
    # main() runs the same preflight, then Hydra composes and prints the job's config
    assert main([*cmd.argv, "--cfg", "job"]) == 0, f"{cmd}: {capsys.readouterr().err}"
    out = capsys.readouterr().out
    assert re.search(r"^nfe: \d+$", out, re.M), out[:500]


def _ends_of_nfe_sweep(override: str) -> str:
    """``nfe=4,5,...,10`` -> ``nfe=4,10`` (the smallest and largest NFE decide what a solver refuses)."""
    key, _, value = override.partition("=")
    if key == "nfe" and "," in value:
        values = value.split(",")
        return f"nfe={values[0]},{values[-1]}"
    return override


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [c for c in LD3 if split_ld3(c.argv)[3]], ids=lambda c: f"{c.doc}:{c.text[:60]}")
def test_full_sweeps_pass_preflight(cmd):
    """(slow) every NFE of every documented sweep; the fast test checks each sweep's first and last NFE."""
    stage_word, _, overrides, _ = split_ld3(cmd.argv)
    assert check_overrides(STAGES[resolve_stage(stage_word)].config, overrides, multirun=True,
                           files=False) is None, str(cmd)


def _overrides_with(argv, extra):
    """argv with ``extra`` appended, dropping the command's own values for the keys ``extra`` sets."""
    keys = {e.split("=", 1)[0] for e in extra}
    kept = [a for a in argv if a.split("=", 1)[0].lstrip("+") not in keys]
    return kept + list(extra)


def _prerequisites(cmd):
    """The teacher (and, for stages reading the learned schedule, training) commands this one needs."""
    stage = resolve_stage(cmd.argv[0])
    _, _, overrides, _ = split_ld3(cmd.argv)
    shared = [o for o in overrides if not o.startswith(("export.", "schedules.", "schedule="))]
    wants_ld3 = "schedule=ld3" in overrides or not any(o.startswith("schedule=") for o in overrides)
    pre = []
    if stage in ("train", "eval", "sample", "export"):
        pre.append(["teacher-sample", *shared])
    if stage in ("eval", "sample", "export") and wants_ld3:
        pre.append(["train", *shared])
    if stage == "schedules" and any(o.startswith("schedules.include=") and "ld3" in o for o in overrides):
        pre += [["teacher-sample", *shared], ["train", *shared]]
    return pre


README_CHEAP = [c for c in CHEAP if c.doc == "README.md"]
OTHER_CHEAP = [c for c in CHEAP if c.doc != "README.md"]


def _run_for_real(cmds, store, tmp_path, monkeypatch):
    """Run ``cmds`` in order (prerequisites first) with the tiny budgets; return the stages run."""
    from ld3_test_helpers import TINY

    monkeypatch.chdir(tmp_path)
    extra = TINY + [f"cache_dir={store}"]
    ran, done = [], set()
    for cmd in cmds:
        for pre in _prerequisites(cmd):
            args = _overrides_with(pre, extra)
            if tuple(args) not in done:  # the store makes a rerun a no-op; skipping it only saves time
                assert main(args) == 0, f"prerequisite {pre} of {cmd}"
                done.add(tuple(args))
        args = _overrides_with(list(cmd.argv), extra)
        assert main(args) == 0, str(cmd)
        done.add(tuple(args))
        ran.append(resolve_stage(cmd.argv[0]))
    return ran


def _check_store(store, ran):
    models = [p for p in store.iterdir() if p.is_dir() and p.name.startswith("mnist_gmm-")]
    assert len(models) == 1
    assert any((models[0] / "teacher").iterdir())
    schedules = [p for p in (models[0] / "schedules").iterdir() if (p / "schedule.json").is_file()]
    assert schedules
    if "eval" in ran or "run" in ran:
        rows = list(csv.DictReader((store / "results.csv").open()))
        assert rows and all(math.isfinite(float(r["value"])) for r in rows)
        assert {r["schedule"] for r in rows} >= {"ld3", "edm", "logsnr"}


def test_readme_tour_runs_for_real(store, tmp_path, monkeypatch, capsys):
    """The README's tour, command by command, on the embedded default (tiny budgets)."""
    assert {resolve_stage(c.argv[0]) for c in README_CHEAP} >= {"teacher-sample", "train", "eval", "sample",
                                                                  "export", "schedules", "run"}
    ran = _run_for_real(README_CHEAP, store, tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "learned schedule" in out and "results appended to" in out
    _check_store(store, ran)
    exports = list(store.glob("exports/*/*/"))
    assert exports and any(p.suffix == ".json" for p in exports[0].iterdir())


@pytest.mark.slow
def test_other_cheap_doc_commands_run_for_real(store, tmp_path, monkeypatch):
    """(slow) the cheap commands of docs/*.md; test_readme_tour_runs_for_real covers the same stages fast."""
    ran = _run_for_real(OTHER_CHEAP, store, tmp_path, monkeypatch)
    _check_store(store, ran)


@pytest.mark.parametrize("cmd", [c for c in ALL if c.kind == "make"], ids=lambda c: " ".join(c.argv))
def test_make_targets_exist(cmd):
    targets = [w for w in cmd.argv if "=" not in w and not w.startswith("-")]
    variables = [w for w in cmd.argv if "=" in w]
    assert targets, str(cmd)
    for target in targets:
        assert make_dry_run(target, *variables).strip(), f"{cmd}: make {target} would run nothing"


@pytest.mark.parametrize("cmd", [c for c in ALL if c.kind == "script"], ids=lambda c: " ".join(c.argv))
def test_scripts_exist(cmd):
    assert (REPO / cmd.argv[0]).is_file(), str(cmd)
