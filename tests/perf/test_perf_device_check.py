"""scripts/device_check.py: the numbers it derives, the budget it keeps, and commands that compose.

The fast tests check the derived quantities against hand computations, that a step which cannot start within
the budget is skipped with its reason (and the report still written), and that the commands of the plan parse
(the ``ld3 run`` overrides compose in Hydra, bench.py accepts its arguments).  The slow test runs the whole
check on a shrunk network on the CPU (``--smoke``), every step to completion.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MNIST_DDPM = REPO.parent / "shared" / "models" / "ddpm_mnist_yz" / "ddpm_mnist_starter.pth"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"ld3_{name}_script", REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def dc():
    return _load("device_check")


def _bench_json(step_s=3.0, iters=100, calls=10, ckpt=0.02, fwd_val=0.005, validations=100):
    return {
        "train": {"wall_s": 40.0, "train_s": step_s + 1, "setup_s": 5.0, "teacher_s": 1.0, "iterations": iters,
                  "s_per_iter": (step_s + 1) / iters, "loss": "lpips", "validation_fraction": 0.3,
                  "peak_memory_mb": 2048.0, "peak_memory_kind": "cuda max_memory_allocated", "batch": 2, "n_val": 50,
                  "nfe": 10, "validations": validations},
        "network": [{"variant": "plain", "batch": 2, "forward_s": 0.004, "fwd_bwd_ckpt_s": ckpt},
                    {"variant": "plain", "batch": 50, "forward_s": fwd_val},
                    {"variant": "bf16", "batch": 2, "forward_s": 1.0, "fwd_bwd_ckpt_s": 9.0}],
        "sampling": [{"nfe": 10, "network_calls": calls, "network_s": 0.9, "solve_s": 1.0, "img_s": 100.0,
                      "host_syncs_per_solve": 0, "host_syncs_per_solve_fwd_bwd": 20}],
    }


def test_summarize_bench_network_share_and_syncs(dc):
    s = dc.summarize_bench(_bench_json())
    # one iteration: 10 calls x (checkpointed fwd+bwd 0.02 s + one validation forward 0.005 s per iteration)
    assert s["network_s_per_iter"] == pytest.approx(10 * (0.02 + 0.005))
    assert s["s_per_iter"] == pytest.approx(0.04)
    # not clamped: (a)'s network calls costing more than the whole iteration shows as a negative share
    assert s["outside_network"] == pytest.approx(1 - 0.25 / 0.04)
    assert s["sampling_vs_network_nfe10"] == pytest.approx(0.9)
    assert s["syncs_per_step_nfe10"] == 0 and s["syncs_per_step_fwd_bwd_nfe10"] == pytest.approx(2.0)
    assert s["peak_gb"] == pytest.approx(2.0)


def test_summarize_bench_outside_share_when_the_network_is_most_of_it(dc):
    # an iteration of 1.0 s of which the network is 10 x (0.08 + 0.5 x 0.02) = 0.9 s -> 10 % outside
    s = dc.summarize_bench(_bench_json(step_s=99.0, iters=100, ckpt=0.08, fwd_val=0.02, validations=50))
    assert s["network_s_per_iter"] == pytest.approx(0.9)
    assert s["outside_network"] == pytest.approx(0.1)
    rows = "\n".join(dc._target_rows({"bench": {"summary": s}}))
    assert "| 10.0 % of 1000 ms | < 5 % | no |" in rows
    assert "| 40.0 s | <= 34 s | no |" in rows and "| 2.00 GB | <= 16 GB | yes |" in rows


def test_summarize_run_stage_times(dc):
    lines = [(2.0, "INFO loading"), (10.0, "[1/3] teacher samples: x"), (40.5, "[2/3] learned schedule: y"),
             (41.0, "[3/3] sampling and evaluating ld3"), (95.5, "done in 95.0s")]
    assert dc.summarize_run(lines) == {"teacher_s": 10.0, "train_s": 30.5, "sample_eval_s": 55.0}


def test_summarize_learned_reads_the_last_record(dc, tmp_path):
    rec = {"time": {"wall": 150.0, "ld3_wall": 100.0}, "ld3": {"rmse": 0.2}, "learned_steps": {"rmse": 0.15},
           "pairs": 1000}
    path = tmp_path / "learned.jsonl"
    path.write_text(json.dumps({**rec, "time": {"wall": 1.0, "ld3_wall": 1.0}}) + "\n" + json.dumps(rec) + "\n")
    s = dc.summarize_learned(path)
    assert s["phase3_s"] == pytest.approx(50.0) and s["ratio"] == pytest.approx(1.5) and s["pairs"] == 1000


def test_a_step_that_does_not_fit_the_budget_is_skipped_and_reported(dc, tmp_path, monkeypatch):
    monkeypatch.setattr(dc, "make_random_assets", lambda folder: {"vgg": "v.pth", "inception": "i.pth", "refs": "r"})
    ran = []
    monkeypatch.setattr(dc, "run_step", lambda step, timeout, log: ran.append(step["name"]))
    assert dc.main(["--out", str(tmp_path), "--device", "cpu", "--smoke", "--budget-s", "30"]) == 0
    assert ran == []  # every step needs at least 45 s
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert list(report["steps"]) == ["bench", "run", "bench_fast", "learned"]
    assert all(s["status"].startswith("skipped") and "--only" in s["status"] for s in report["steps"].values())
    assert "skipped" in (tmp_path / "device_check.md").read_text()


def test_the_timeout_kills_a_step_and_keeps_its_output(dc, tmp_path):
    step = {"argv": [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]}
    res = dc.run_step(step, 1.5, tmp_path / "s.log")
    assert res["status"] == "timeout" and res["wall_s"] < 10
    assert res["lines"][0][1] == "started" and "started" in (tmp_path / "s.log").read_text()


def test_the_plan_commands_compose(dc, tmp_path):
    """The ``ld3 run`` overrides compose into a config with the check's sizes; bench.py parses its arguments."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ld3_cli.cli.apps import config_dir

    args = type("A", (), {"out": str(tmp_path), "smoke": False, "device": "cuda", "mnist_ddpm": str(MNIST_DDPM),
                          "grid_jobs": 12})()
    steps = {s["name"]: s for s in dc.plan(args, {"vgg": "v.pth", "inception": "i.pth", "refs": "r"})}
    assert list(steps) == ["bench", "run", "bench_fast", "learned", "compile", "grid"]
    run = steps["run"]["argv"]
    overrides = run[run.index("run") + 1:]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="t"):
        cfg = compose("run", overrides=overrides)
    assert cfg.model.name == "edm-cifar10-random" and cfg.sample.n == 10_000 and list(cfg.eval.compare) == ["ld3"]
    assert cfg.train.loss == "lpips" and cfg.nfe == 10 and cfg.teacher.n == 100 and cfg.train.iters_phase2 == 125
    GlobalHydra.instance().clear()
    bench = _load("bench")
    for name in ("bench", "bench_fast", "compile"):
        argv = steps[name]["argv"]
        parsed, model, _ = bench.parse_args(argv[argv.index("scripts/bench.py") + 1:])
        assert model == "edm_cifar10_random" and parsed.n == 100 and parsed.nfe == 10 and parsed.teacher_nfe == 20
    assert "--no-alone" in steps["learned"]["argv"] and "1000" in steps["learned"]["argv"]


@pytest.mark.slow
def test_smoke_run_on_cpu(tmp_path):
    """The whole check on a shrunk network on the CPU: every step finishes and reports its numbers."""
    cmd = [str(REPO / "scripts" / "device_check.sh"), str(tmp_path), "--smoke", "--device", "cpu"]
    if MNIST_DDPM.is_file():
        cmd += ["--mnist-ddpm", str(MNIST_DDPM)]
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert all(s["status"] == "ok" for s in report["steps"].values()), report["steps"]
    assert report["steps"]["run"]["summary"]["train_s"] > 0
    assert report["steps"]["learned"]["summary"]["phase3_s"] > 0
    assert report["steps"]["bench"]["summary"]["iterations"] == 2
