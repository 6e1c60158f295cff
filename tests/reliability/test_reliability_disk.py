"""A full disk while writing leaves the previous state intact; rerunning finishes identically.

The store writes every file through one function (``atomic_write_bytes``: a temporary sibling,
then a rename).  Here its ``open`` is replaced so that, from the n-th write of a matching file on,
the write puts half the bytes on disk and then fails with ``ENOSPC`` (the disk stays full).  The
command must exit 2 with one line naming the file, keep every file finished before (byte for
byte), leave no temporary or half-written file, and the same command must then complete with
results identical to a run that never failed.
"""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from reliability_testlib import artifacts, one_error_line, only_artifact, run_cli

import ld3_cli.store.artifact as artifact_module
from ld3_cli.stages import train as train_stage
from ld3_cli.store import read_metadata


class _FullDisk:
    """A writable file on a disk that fills up half-way through the first write."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(match, nth)``: writes of files whose name contains ``match`` fail from the nth on."""

    def arm(match: str, nth: int = 1):
        real_open, seen = open, []

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if "w" in mode and match in str(file).rsplit("/", 1)[-1]:
                seen.append(file)
                if len(seen) >= nth:
                    return _FullDisk(f)
            return f

        monkeypatch.setattr(artifact_module, "open", fake_open, raising=False)  # undone after the test
        return seen

    return arm


def no_debris(cache):
    return [p for p in cache.rglob("*") if p.name.endswith(".tmp")] == []


def test_full_disk_while_writing_shards_keeps_finished_shards(store_copy, session_stores, disk_full, monkeypatch,
                                                              capsys):
    cache = store_copy("train")
    ref = only_artifact(session_stores("sample"), "samples")
    part_of = lambda: next(cache.glob("*/samples/*.partial"))  # noqa: E731

    disk_full("shard_00001.npz")
    assert run_cli("sample", cache=cache) == 2
    line = one_error_line(capsys.readouterr().err, "sample")
    part = part_of()
    assert f"no space left on the device while writing {part / 'shard_00001.npz'}" in line, line
    assert "rerun the same command to resume" in line
    assert sorted(p.name for p in part.iterdir()) == ["shard_00000.npz"] and no_debris(cache)
    first = (part / "shard_00000.npz").read_bytes()

    disk_full("shard_00003.npz")  # a second attempt runs out of space later
    assert run_cli("sample", cache=cache) == 2
    assert sorted(p.name for p in part.iterdir()) == [f"shard_0000{k}.npz" for k in range(3)] and no_debris(cache)
    assert (part / "shard_00000.npz").read_bytes() == first, "a finished shard was rewritten"
    assert artifacts(cache, "samples") == []

    monkeypatch.delattr(artifact_module, "open")  # space freed
    assert run_cli("sample", cache=cache) == 0
    art = only_artifact(cache, "samples")
    assert art.name == ref.name and (art / "shard_00000.npz").read_bytes() == first
    for k in range(6):
        with np.load(art / f"shard_{k:05d}.npz") as a, np.load(ref / f"shard_{k:05d}.npz") as b:
            np.testing.assert_array_equal(a["images"], b["images"])
            np.testing.assert_array_equal(a["seeds"], b["seeds"])
    assert no_debris(cache) and not list(cache.glob("*/samples/*.partial"))


def test_full_disk_while_publishing_samples_keeps_every_shard(store_copy, disk_full, monkeypatch, capsys):
    cache = store_copy("train")
    disk_full("manifest.json")  # the last write of publishing, after the shards moved into the artifact
    assert run_cli("sample", cache=cache) == 2
    assert "no space left on the device while writing" in one_error_line(capsys.readouterr().err, "sample")
    part = next(cache.glob("*/samples/*.partial"))
    shards = sorted(part.glob("shard_*.npz"))
    assert len(shards) == 6 and artifacts(cache, "samples") == [] and no_debris(cache)
    inodes = {p.name: p.stat().st_ino for p in shards}

    monkeypatch.delattr(artifact_module, "open")
    assert run_cli("sample", cache=cache) == 0
    art = only_artifact(cache, "samples")
    assert {p.name: p.stat().st_ino for p in art.glob("shard_*.npz")} == inodes, "the shards were resampled"


def test_full_disk_while_teacher_sampling_keeps_finished_batches(store_copy, session_stores, disk_full, monkeypatch,
                                                                 capsys):
    cache = store_copy(None)
    disk_full("batch_00000004.safetensors")
    assert run_cli("teacher-sample", cache=cache) == 2
    assert "batch_00000004.safetensors" in one_error_line(capsys.readouterr().err, "teacher-sample")
    part = next(cache.glob("*/teacher/*.partial"))
    assert sorted(p.name for p in part.iterdir()) == ["batch_00000000.safetensors", "batch_00000002.safetensors"]
    assert no_debris(cache) and artifacts(cache, "teacher") == []

    monkeypatch.delattr(artifact_module, "open")
    assert run_cli("teacher-sample", cache=cache) == 0
    ref = only_artifact(session_stores("teacher-sample"), "teacher")
    art = only_artifact(cache, "teacher")
    assert (art / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()


def test_full_disk_while_saving_training_state_keeps_the_last_state(store_copy, session_stores, disk_full,
                                                                    monkeypatch, capsys):
    cache = store_copy("teacher-sample")
    monkeypatch.setattr(train_stage, "SAVE_EVERY_S", 0.0)  # save the state after every iteration
    writes = disk_full("state.safetensors", nth=4)
    assert run_cli("train", cache=cache) == 2
    assert "state.safetensors" in one_error_line(capsys.readouterr().err, "train")
    assert len(writes) == 5  # 3 states saved, the 4th failed, and so did the save on the way out
    state = next(cache.glob("*/schedules/*.partial/state.safetensors"))
    assert json.loads(read_metadata(state)["ld3_train_state"])["iteration"] == 3, "the last good state is kept"
    assert no_debris(cache) and artifacts(cache, "schedules") == []

    monkeypatch.delattr(artifact_module, "open")
    assert run_cli("train", cache=cache) == 0
    ref = only_artifact(session_stores("train"), "schedules")
    art = only_artifact(cache, "schedules")
    assert (art / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()
