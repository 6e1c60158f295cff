"""NaN / Inf from the network stops a stage with a clear message; training keeps its best schedule.

The fault comes from :class:`reliability_models.GaussianWithFaults` (``LD3_TEST_FAULT``): every
output becomes NaN (or Inf) from a chosen call on; ``grad`` counts the trainer's student forward
passes (autograd on), ``nograd`` everything else (teacher, proposal, validation, sampling).  The
fault is not part of the model's key, so the faulty and the clean runs share the teacher.

Training that meets a non-finite loss must exit 2 naming the iteration and where the best
schedule so far is kept; that schedule must be valid and equal, exactly, to what a clean run
learns in the iterations before the fault.  A non-finite teacher or sample is refused, never
stored.  (Learned schedules that are not strictly decreasing or leave [sigma_min, sigma_max] are
rejected at load: test_reliability_corrupt.py::test_sample_refuses_a_damaged_learned_schedule.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from reliability_models import FAULT_ENV, fault_spec
from reliability_testlib import artifacts, leftovers, only_artifact, run_cli, run_refused

NFE = 5
INIT_CALLS = 4 * 2 * NFE  # four candidate initial schedules, each on the train and the validation split
NOGRAD_PER_ITER = 2 * NFE  # the soft-teacher proposal and the validation of one iteration


@pytest.fixture
def fault(monkeypatch):
    def set_fault(value, when, after):
        monkeypatch.setenv(FAULT_ENV, fault_spec(value, when, after))

    return set_fault


@pytest.mark.parametrize("value,when,after,message,iteration,validated", [
    # the 4th training step's forward pass returns NaN, so its loss is NaN (3 iterations done and validated)
    ("nan", "grad", 3 * NFE, "training loss became nan at iteration 3", 3, 3),
    # the 3rd validation's network returns Inf (after 3 proposals): iteration 3 stepped, its validation failed
    # (the solver's weighted sums of Inf outputs make the images, so the loss, NaN)
    ("inf", "nograd", INIT_CALLS + 2 * NOGRAD_PER_ITER + NFE, "validation loss became nan", 3, 2),
])
def test_nonfinite_network_output_stops_training_and_keeps_the_best_schedule(
        value, when, after, message, iteration, validated, store_copy, fault, monkeypatch, capsys):
    cache = store_copy("teacher-sample")
    fault(value, when, after)
    line = run_refused(capsys, "train", cache=cache)
    assert message in line, line
    kept = re.search(r"the best schedule so far \(validation ([0-9.e+-]+)\) is kept in (\S+)$", line)
    assert kept, line
    best = json.loads(Path(kept.group(2)).read_text())
    assert artifacts(cache, "schedules") == [], "a failed training publishes nothing"

    sig = torch.tensor(best["sigmas"], dtype=torch.float64)
    ev = torch.tensor(best["sigmas_eval"], dtype=torch.float64)
    assert sig.numel() == NFE + 1 and bool(torch.all(sig[1:] < sig[:-1]))
    assert abs(float(sig[0]) - 80.0) < 1e-9 and abs(float(sig[-1]) - 0.002) < 1e-12
    assert bool(torch.isfinite(ev).all()) and bool(torch.all(ev > 0))
    assert best["iteration"] == iteration and float(kept.group(1)) == pytest.approx(best["best_val"], rel=1e-4)

    # a clean run that stops after the last validated iteration learns exactly the kept schedule
    monkeypatch.delenv(FAULT_ENV)
    assert run_cli("train", f"train.iters_phase1={validated}", "train.iters_phase2=0", cache=cache) == 0
    art = only_artifact(cache, "schedules")
    learned = json.loads((art / "schedule.json").read_text())
    assert learned["sigmas"] == best["sigmas"] and learned["sigmas_eval"] == best["sigmas_eval"]
    assert json.loads((art / "summary.json").read_text())["best_val"] == best["best_val"]


@pytest.mark.parametrize("stage,upto,value,needle", [
    ("teacher-sample", None, "nan", "the teacher produced NaN/Inf for seeds 0..1"),
    ("sample", "train", "inf", "the sampler produced NaN/Inf for seeds 1000000..1000003"),
])
def test_nonfinite_teacher_or_samples_are_refused_not_stored(stage, upto, value, needle, store_copy, fault, capsys):
    cache = store_copy(upto)
    fault(value, "nograd", 0)
    line = run_refused(capsys, stage, cache=cache)
    assert needle in line and "check the model" in line, line
    kind = "teacher" if stage == "teacher-sample" else "samples"
    assert artifacts(cache, kind) == []
    assert all(not any(p.iterdir()) for p in leftovers(cache)), "no partial result holds a non-finite value"
