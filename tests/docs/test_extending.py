"""docs/extending.md works as written: its files import, its snippets pass, its commands run.

Every ``# file: <path>`` code block is written under a temporary directory (the config tree is
copied there first, so ``configs/solver/dpm2.yaml`` lands in a private copy); the other Python
blocks run as they are.  The example solver is then used through the CLI (``solver=dpm2``) and
the example model through ``model=custom model._target_=...``.
"""
import re
import shutil
import sys

import pytest
from docs_testlib import REPO, commands, split_ld3

from ld3_cli.cli.main import main

DOC = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def blocks(lang):
    return [body for la, body in BLOCK.findall(DOC.read_text()) if la == lang]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """tmp dir with a private config tree, every ``# file:`` block written, on sys.path, registries restored."""
    import importlib

    import ld3_cli.solvers as solvers_pkg

    disc = importlib.import_module("ld3_cli.schedules.discretize")  # the module (the package exports a function too)

    shutil.copytree(REPO / "configs", tmp_path / "configs")
    written = []
    for body in blocks("python") + blocks("yaml"):
        first = body.splitlines()[0]
        if first.startswith("# file: "):
            path = tmp_path / first[len("# file: "):].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            written.append(path.relative_to(tmp_path).as_posix())
    assert {"my_solvers.py", "my_models.py", "my_schedules.py", "configs/solver/dpm2.yaml"} <= set(written)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(disc, "_REGISTRY", dict(disc._REGISTRY))
    monkeypatch.setattr(solvers_pkg, "SOLVERS", dict(solvers_pkg.SOLVERS))  # the example registers into a copy
    monkeypatch.setenv("LD3_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("my_solvers", "my_models", "my_schedules"):
        sys.modules.pop(name, None)


def test_snippets_run(workdir):
    import my_schedules  # noqa: F401 - registers logsnr_cosine

    snippets = [b for b in blocks("python") if not b.startswith("# file: ")]
    assert len(snippets) >= 2
    for code in snippets:
        exec(compile(code, str(DOC), "exec"), {"__name__": "docs_snippet"})
    from ld3_cli.schedules import EDM, discretize

    sig = discretize("logsnr_cosine", 6, EDM(0.002, 80.0))
    assert float(sig[0]) == pytest.approx(80.0) and float(sig[-1]) == pytest.approx(0.002)
    lam = -sig.log()
    steps = lam[1:] - lam[:-1]
    assert bool((steps > 0).all()) and float(steps[0]) < float(steps[3]) > float(steps[-1])  # denser at both ends


def test_example_solver_through_the_cli(workdir, tmp_path, capsys):
    from ld3_test_helpers import TINY

    from ld3_cli.solvers import SOLVERS
    from my_solvers import DPM2

    SOLVERS["dpm2"] = DPM2()
    cache = [f"cache_dir={tmp_path / 'cache'}"]
    assert main(["train", "solver=dpm2", "nfe=5", *cache]) == 2
    assert "dpm2 needs an even NFE" in capsys.readouterr().err
    cmds = [c for c in commands([DOC]) if "solver=dpm2" in c.text]
    assert [c.argv[0] for c in cmds] == ["train", "eval"]
    assert main(["teacher-sample", *TINY, *cache]) == 0
    for c in cmds:
        assert main([*c.argv, *TINY, *cache]) == 0, c
    out = capsys.readouterr().out
    assert "dpm2" in out
    import json

    sched = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*/schedules/*/schedule.json")]
    assert len(sched) == 1 and sched[0]["solver"] == "dpm2" and sched[0]["steps"] == 2 and sched[0]["nfe"] == 4


def test_example_model_through_the_cli(workdir, tmp_path):
    from ld3_test_helpers import TINY

    (cmd,) = [c for c in commands([DOC]) if "my_models" in c.text]
    assert cmd.env == ("PYTHONPATH=.",)
    _, _, overrides, _ = split_ld3(cmd.argv)
    assert main([*cmd.argv, *TINY, f"cache_dir={tmp_path / 'cache'}"]) == 0
    import csv

    rows = list(csv.DictReader((tmp_path / "cache" / "results.csv").open()))
    assert {r["model"] for r in rows} == {"custom"} and {r["schedule"] for r in rows} >= {"ld3", "edm"}
    assert "+model.std=0.3" in overrides
