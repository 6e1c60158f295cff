"""SIGINT / SIGTERM during teacher-sample, train, sample and eval lose nothing.

Each test starts the stage as a real ``ld3`` subprocess whose model sleeps a little per call
(``LD3_TEST_PACE``: slow enough to interrupt, outputs unchanged), waits until the store's
``<key>.partial/`` directory shows finished partial work, sends the signal once and checks the
process exits 130 with the partial work kept and no artifact published.  Rerunning the same
command (in-process, unpaced, same working directory and arguments) must then finish with
results identical to an uninterrupted run: tensors byte-for-byte, sample arrays exactly,
metrics.json byte-for-byte.
"""
from __future__ import annotations

import json

import pytest
from reliability_testlib import (CACHE, artifacts, assert_same_shards, interrupt, leftovers, only_artifact, run_cli,
                                 spawn, wait_until)

from ld3_cli.store import read_metadata


@pytest.fixture
def rerun(monkeypatch):
    """Run ``ld3 <stage> <args>`` in-process from ``cwd`` exactly as the subprocess was started."""
    monkeypatch.delenv("LD3_CACHE", raising=False)

    def run(stage, *args, cwd):
        monkeypatch.chdir(cwd)
        return run_cli(stage, *args)

    return run


def partial_files(cache, kind, pattern):
    return sorted(cache.glob(f"*/{kind}/*.partial/{pattern}"))


def assert_interrupted(code, err, cache, kind):
    assert code == 130, err
    assert "interrupted; finished work is saved in the store -- rerun the same command to resume" in err
    assert "Traceback" not in err, err
    assert artifacts(cache, kind) == [], "an interrupted producer must not publish"


def assert_same_samples(a, b):
    assert_same_shards(a, b)
    assert (a / "grid.png").read_bytes() == (b / "grid.png").read_bytes()


def test_teacher_sample_sigint_then_rerun_is_identical(store_copy, session_stores, rerun):
    cache = store_copy(None)
    proc = spawn("teacher-sample", cwd=cache.parent, pace=0.2)  # 12 calls per batch: ~2.4 s a batch
    wait_until(lambda: partial_files(cache, "teacher", "batch_*.safetensors"), proc, what="a finished batch")
    code, _, err = interrupt(proc, "SIGINT")
    assert_interrupted(code, err, cache, "teacher")
    done = partial_files(cache, "teacher", "batch_*.safetensors")
    assert 1 <= len(done) < 4, done  # some, not all, of the 4 batches; each one complete
    assert rerun("teacher-sample", cwd=cache.parent) == 0
    ours, ref = only_artifact(cache, "teacher"), only_artifact(session_stores("teacher-sample"), "teacher")
    assert ours.name == ref.name
    assert (ours / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()
    assert leftovers(cache) == []


def test_train_sigterm_mid_epoch_then_rerun_resumes_exactly(store_copy, session_stores, rerun):
    cache = store_copy("teacher-sample")
    proc = spawn("train", cwd=cache.parent, pace=0.04)  # 15 calls per iteration, 20 iterations
    state = []
    wait_until(lambda: state.extend(partial_files(cache, "schedules", "state.safetensors")) or state, proc,
               what="a saved training state")
    code, _, err = interrupt(proc, "SIGTERM")  # the runner turns it into KeyboardInterrupt
    assert_interrupted(code, err, cache, "schedules")
    info = json.loads(read_metadata(state[0])["ld3_train_state"])
    assert 1 <= info["iteration"] < 20 and len(info["history"]) == info["iteration"]
    assert rerun("train", cwd=cache.parent) == 0
    ours, ref = only_artifact(cache, "schedules"), only_artifact(session_stores("train"), "schedules")
    assert ours.name == ref.name
    for name in ("tensors.safetensors", "schedule.json"):
        assert (ours / name).read_bytes() == (ref / name).read_bytes(), name

    def losses(art):
        return [(r["iteration"], r["loss"], r.get("val")) for r in map(json.loads, (art / "train_log.jsonl").open())]

    assert losses(ours) == losses(ref) and len(losses(ours)) == 20  # the same 20 iterations, none lost or repeated
    assert leftovers(cache) == []


def test_sample_sigterm_then_rerun_is_identical(store_copy, session_stores, rerun):
    cache = store_copy("train")
    proc = spawn("sample", cwd=cache.parent, pace=0.25)  # 5 calls per shard of 4 images, 6 shards
    wait_until(lambda: partial_files(cache, "samples", "shard_*.npz"), proc, what="a finished shard")
    code, _, err = interrupt(proc, "SIGTERM")
    assert_interrupted(code, err, cache, "samples")
    done = partial_files(cache, "samples", "shard_*.npz")
    assert 1 <= len(done) < 6, done
    assert rerun("sample", cwd=cache.parent) == 0
    ours, ref = only_artifact(cache, "samples"), only_artifact(session_stores("sample"), "samples")
    assert ours.name == ref.name
    assert_same_samples(ours, ref)
    assert leftovers(cache) == []


def test_eval_sigint_then_rerun_is_identical(store_copy, rerun):
    cache = store_copy("train")
    reference = store_copy("train", where="reference")
    proc = spawn("eval", cwd=cache.parent, pace=0.25)
    wait_until(lambda: partial_files(cache, "samples", "shard_*.npz"), proc, what="a finished shard")
    code, _, err = interrupt(proc, "SIGINT")
    assert_interrupted(code, err, cache, "eval")
    assert artifacts(cache, "samples") == [] and partial_files(cache, "samples", "shard_*.npz")
    assert not (cache / "results.csv").exists()
    assert rerun("eval", cwd=cache.parent) == 0
    assert run_cli("eval", cache=reference) == 0  # uninterrupted, in another store
    ours, ref = artifacts(cache, "eval"), artifacts(reference, "eval")
    assert [p.name for p in ours] == [p.name for p in ref] and len(ours) == 1
    for a, b in zip(ours, ref):
        assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    for a, b in zip(artifacts(cache, "samples"), artifacts(reference, "samples")):
        assert a.name == b.name
        assert_same_samples(a, b)

    def rows(root):
        lines = (root / "results.csv").read_text().splitlines()
        return [ln.split(",", 1)[1] for ln in lines[1:]]  # without the date column

    assert rows(cache) == rows(reference) and rows(cache)
    assert leftovers(cache) == [] and (cache.parent / CACHE) == cache
