"""Helpers of the reliability suite (the fixtures in conftest.py use them): CLI runs, store inspection.

Every test runs the real CLI: in-process (``ld3_cli.cli.main.main``) where only the outcome
matters, as a subprocess of the installed ``ld3`` where a process boundary is the point
(signals, concurrency, exit statuses).  The model is :mod:`reliability_models` (an exact
Gaussian denoiser, no weights, with injectable faults) through ``model=custom``; torch runs
on one thread everywhere, so in-process and subprocess runs give bit-identical results.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ld3_cli.cli.main import main

HERE = Path(__file__).resolve().parent
CACHE = "ld3-cache"  # the default cache_dir, relative to the working directory

# 1x8x8 images: every metric is cheap (a 64-d Frechet distance; MNIST's fd_data does not apply)
MODEL = ["model=custom", "model._target_=reliability_models.GaussianWithFaults", "+model.shape=[1,8,8]"]
# tiny budgets: every stage in well under a second in-process
# (teacher: 4 batches; train: 4 train samples, one per iteration, 20 iterations; sample: 6 shards of 4)
TINY = ["teacher.n=8", "teacher.nfe=12", "teacher.check_n=2", "teacher.batch_size=2", "train.iters_phase1=10",
        "train.iters_phase2=10", "train.batch_size=1", "sample.n=24", "sample.shard_size=4", "sample.batch_size=4",
        "eval.exact_n=64", "eval.heldout_n=4", "eval.compare=[ld3]", "progress=false", "device=cpu"]
ARGS = MODEL + TINY
LD3_BIN = Path(sys.executable).with_name("ld3")


def run_cli(stage: str, *args: str, cache: Path | None = None, base=ARGS) -> int:
    """``ld3 <stage> <base> <args>`` in-process (in the current directory unless ``cache`` is given)."""
    extra = [f"cache_dir={cache}"] if cache is not None else []
    return main([stage, *base, *args, *extra])


def run_refused(capsys, stage: str, *args: str, cache: Path) -> str:
    """``run_cli`` that must exit 2; returns the run's one ``ld3 <stage>: error:`` line."""
    capsys.readouterr()
    assert run_cli(stage, *args, cache=cache) == 2
    return one_error_line(capsys.readouterr().err, stage)


def build_store(root: Path, upto: str) -> Path:
    """A store in ``root`` holding the pipeline's artifacts up to ``upto`` (teacher, train, sample, eval).

    Built lazily from inside a test, so under the autouse one-thread fixture of conftest.py."""
    cache = root / CACHE
    steps = ["teacher-sample", "train", "sample", "eval"]
    for stage in steps[: steps.index(upto) + 1]:
        assert run_cli(stage, cache=cache) == 0, stage
    shutil.rmtree(cache / "logs", ignore_errors=True)
    return cache


# -- looking at a store ------------------------------------------------------------------------------
def artifacts(cache: Path, kind: str) -> list[Path]:
    """Finished artifacts of ``kind`` (directories with a manifest)."""
    return sorted(p.parent for p in cache.glob(f"*/{kind}/*/manifest.json"))


def only_artifact(cache: Path, kind: str) -> Path:
    found = artifacts(cache, kind)
    assert len(found) == 1, found
    return found[0]


def store_listing(cache: Path) -> set[str]:
    """Every path in the store except Hydra's job logs (``logs/``)."""
    return {str(p.relative_to(cache)) for p in cache.rglob("*") if p.relative_to(cache).parts[0] != "logs"}


def leftovers(cache: Path) -> list[Path]:
    """Work in progress and temporary files (none may remain after a finished command)."""
    return sorted(p for p in cache.rglob("*") if p.name.endswith((".partial", ".tmp")))


def assert_same_shards(a: Path, b: Path) -> None:
    """The sample artifacts (or partial directories) ``a`` and ``b`` hold the same shards, array for array."""
    names = sorted(p.name for p in a.glob("shard_*.npz"))
    assert names == sorted(p.name for p in b.glob("shard_*.npz")) and names
    for name in names:
        with np.load(a / name) as za, np.load(b / name) as zb:
            np.testing.assert_array_equal(za["images"], zb["images"])
            np.testing.assert_array_equal(za["seeds"], zb["seeds"])


def one_error_line(err: str, stage: str) -> str:
    """The single ``ld3 <stage>: error: ...`` line of ``err`` (other stderr lines are log lines)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ld3 {stage}: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


# -- subprocesses --------------------------------------------------------------------------------------
def cli_env(pace: float = 0.0) -> dict:
    env = dict(os.environ)
    for name in ("LD3_CACHE", "LD3_TEST_FAULT"):
        env.pop(name, None)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LD3_THREADS="1", LD3_TEST_PACE=str(pace),
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _default_sigint() -> None:
    """In the child before exec: a shell runs background jobs with SIGINT ignored, and an ignored
    SIGINT is inherited (Python then never raises KeyboardInterrupt); the tests send SIGINT on purpose."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(stage: str, *args: str, cwd: Path, pace: float = 0.0, base=ARGS) -> subprocess.Popen:
    """Start ``ld3 <stage> ...`` as a subprocess in ``cwd`` (its store is ``cwd/ld3-cache``)."""
    cmd = [str(LD3_BIN)] if LD3_BIN.is_file() else [sys.executable, "-m", "ld3_cli"]
    return subprocess.Popen([*cmd, stage, *base, *args], cwd=cwd, env=cli_env(pace), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def wait_until(cond, proc: subprocess.Popen | None = None, timeout: float = 180.0, what: str = "") -> None:
    """Poll ``cond()`` every 20 ms; fail if ``proc`` ends first or after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (status {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 180.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the process did not finish in {timeout}s:\n{out}\n{err}")
    return proc.returncode, out, err


def interrupt(proc: subprocess.Popen, sig: str) -> tuple[int, str, str]:
    proc.send_signal(getattr(signal, sig))
    return finish(proc)
