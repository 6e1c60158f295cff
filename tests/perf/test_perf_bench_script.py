"""scripts/bench.py end to end with tiny settings on CPU: every section runs and reports positive numbers."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench.py"
TINY = ["--device", "cpu", "--n", "4", "--batch", "2", "--iters", "2", "--sample-batch", "3", "--teacher-nfe", "4",
        "--nfe", "3", "--sampling-nfe", "3,4", "--teacher-batch", "4", "--reps", "2", "--warmup", "0",
        "--min-time", "0", "--threads", "1"]
# the DDPM++ / VP CIFAR-10 config, shrunk (16x16 images, 16 channels, 2 levels, 1 block) so a CPU test stays fast
EDM_SMALL = ["model=edm_cifar10_random", "model.init_kwargs.img_resolution=16", "model.init_kwargs.model_channels=16",
             "model.init_kwargs.channel_mult=[1,1]",
             "model.init_kwargs.num_blocks=1", "--loss", "l2"]  # auto would be LPIPS (RGB), whose weights a CI lacks


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ld3_bench_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ld3-cache")


def _run(bench, argv, tmp_path, capsys) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    n_threads = torch.get_num_threads()
    try:
        assert bench.main(argv + ["--json", str(out)]) == 0
    finally:
        torch.set_num_threads(n_threads)
    return json.loads(out.read_text()), capsys.readouterr().out


def _positive(d: dict, keys) -> None:
    for k in keys:
        assert isinstance(d[k], (int, float)) and d[k] > 0, (k, d.get(k))


def _check_common(res: dict, nfes=(3, 4)) -> None:
    meta = res["meta"]
    assert meta["device"] == "cpu" and meta["threads"] == 1 and meta["tf32"] is None
    net = res["network"]
    assert {r["variant"] for r in net} == {"plain", "channels_last"}
    # the training batch (2) gets forward+backward; the validation set (2) is the same batch; sampling is 3
    assert sorted({r["batch"] for r in net}) == [2, 3]
    for r in net:
        _positive(r, ["forward_s", "forward_img_s", "first_call_s"])
        assert r["forward_img_s"] == pytest.approx(r["batch"] / r["forward_s"])
        if r["batch"] == 2:
            _positive(r, ["fwd_bwd_s", "fwd_bwd_img_s", "fwd_bwd_ckpt_s", "fwd_bwd_ckpt_img_s"])
        else:
            assert "fwd_bwd_s" not in r
    t = res["train"]
    assert (t["n"], t["n_train"], t["n_val"], t["nfe"], t["teacher_nfe"], t["batch"]) == (4, 2, 2, 3, 4, 2)
    assert t["iters_budget"] == [1, 1] and t["iterations"] == 2 and t["validations"] == 2
    assert t["loss"] in ("l2", "lpips")
    _positive(t, ["teacher_s", "setup_s", "train_s", "wall_s", "s_per_iter", "step_s", "validation_s",
                  "peak_memory_mb"])
    assert t["wall_s"] == pytest.approx(t["setup_s"] + t["train_s"])
    assert t["step_s"] + t["validation_s"] <= t["train_s"] * 1.001
    assert 0 < t["validation_fraction"] < 1
    samp = res["sampling"]
    assert [r["nfe"] for r in samp] == list(nfes)
    for r in samp:
        assert r["network_calls"] == r["nfe"]  # UniPC: one evaluation per step
        _positive(r, ["solve_s", "img_s", "network_s", "solver_math_s", "solver_math_fraction"])
        assert r["img_s"] == pytest.approx(r["batch"] / r["solve_s"])
        assert r["outside_network_fraction"] < 1
        assert "host_syncs_per_solve" not in r  # counted on CUDA only


def test_bench_mixture_in_process(bench, cache, tmp_path, capsys):
    res, text = _run(bench, ["model=mnist_gmm", *TINY, "--cache-dir", str(cache)], tmp_path, capsys)
    assert res["meta"]["model"] == "mnist_gmm" and res["meta"]["shape"] == [1, 28, 28]
    _check_common(res)
    assert res["train"]["loss"] == "l2"  # one channel: never LPIPS
    assert res["train"]["grad_checkpoint"] is False  # no parameters: checkpointing off under "auto"
    for title in ("(a) network throughput", "(b) ld3 training", "(c) sampling"):
        assert title in text


def test_bench_edm_architecture_in_process(bench, tmp_path, capsys):
    res, _ = _run(bench, [*EDM_SMALL, *TINY, "--grad-checkpoint", "true", "--autocast", "bf16"], tmp_path, capsys)
    meta = res["meta"]
    assert meta["shape"] == [3, 16, 16] and meta["params"] > 10_000
    assert meta["speed"]["autocast"] == "bf16"
    _check_common(res)
    assert res["train"]["grad_checkpoint"] is True
    # bf16 sampling is compared with the float32 network on the same noise
    assert all(r["rmse_vs_float32"] >= 0 for r in res["sampling"])


def test_bench_script_runs_as_a_program(cache, tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "model=mnist_gmm", *TINY, "--cache-dir", str(cache),
                           "--skip-network", "--skip-train", "--sampling-nfe", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert "network" not in res and "train" not in res and [r["nfe"] for r in res["sampling"]] == [3]
    assert "(c) sampling" in proc.stdout


def test_bench_unknown_model_is_a_one_line_error(bench, capsys):
    assert bench.main(["model=no_such_model", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no model config 'no_such_model'" in err and "edm_cifar10_random" in err


@pytest.mark.slow
def test_bench_full_cifar_architecture(bench, tmp_path, capsys):
    """The real 55.7M-parameter DDPM++ architecture (random weights) with the smallest workload."""
    argv = ["model=edm_cifar10_random", *TINY, "--init", "logsnr", "--teacher-nfe", "3", "--sampling-nfe", "3",
            "--variants", "plain", "--loss", "l2"]
    res, _ = _run(bench, argv, tmp_path, capsys)
    assert 55e6 < res["meta"]["params"] < 56e6 and res["meta"]["shape"] == [3, 32, 32]
    assert res["train"]["grad_checkpoint"] is True  # auto: on above 1M parameters
    _positive(res["train"], ["train_s", "s_per_iter", "peak_memory_mb"])
