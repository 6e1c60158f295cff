"""`ld3 train solver=dpmpp nfe=4` checks its configuration once, derives the solver setup once, tries no solve.

Counted in-process on the embedded mixture: every option value check (``Option.check``, by config path), every
``SolverSetup.from_config`` and every solver run (``Evaluator``) made before the model is built.
"""
from __future__ import annotations

from collections import Counter

from ld3_cli.cli.main import main
from ld3_cli.models import registry
from ld3_cli.solvers import base
from ld3_cli.solvers.config import SolverSetup
from ld3_cli.stages import checks
from ld3_cli.utils.option_schema import Option

FAST = ["teacher.n=6", "teacher.nfe=8", "train.iters_phase1=2", "train.iters_phase2=2", "eval.compare=[ld3]",
        "progress=false"]


def test_train_validates_once_and_tries_nothing_before_work(tmp_path, monkeypatch):
    cache = f"cache_dir={tmp_path / 'cache'}"
    assert main(["teacher-sample", *FAST, cache]) == 0
    checks._SETTINGS.clear()  # measure this command from a cold start, as a new process would

    checked, setups, solves, solves_before_model = Counter(), Counter(), [0], []
    check, from_config = Option.check, SolverSetup.from_config.__func__
    evaluator_init, build_model = base.Evaluator.__init__, registry.build_model

    def counting_check(self, value, prefix):
        checked[f"{prefix}.{self.name}"] += 1
        return check(self, value, prefix)

    def counting_setup(cls, solver_cfg, nfe, prefix="solver"):
        setups[prefix] += 1
        return from_config(cls, solver_cfg, nfe, prefix)

    def counting_evaluator(self, *a, **k):
        solves[0] += 1
        evaluator_init(self, *a, **k)

    def first_build(*a, **k):
        solves_before_model.append(solves[0])
        return build_model(*a, **k)

    monkeypatch.setattr(Option, "check", counting_check)
    monkeypatch.setattr(SolverSetup, "from_config", classmethod(counting_setup))
    monkeypatch.setattr(base.Evaluator, "__init__", counting_evaluator)
    monkeypatch.setattr(registry, "build_model", first_build)
    assert main(["train", "solver=dpmpp", "nfe=4", *FAST, cache]) == 0

    assert checked["train.lr"] == 1 and checked["solver.order"] == 1 and checked["teacher.solver.order"] == 1, checked
    assert max(checked.values()) == 1, checked
    assert setups == Counter({"solver": 1, "teacher.solver": 1}), setups
    assert solves_before_model == [0] and solves[0] > 0  # the model is built once, before any solve
