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

import pytest
from reliability_testlib import artifacts, assert_same_shards, only_artifact, run_cli, run_refused

import ld3_cli.store.files as files_module
from ld3_cli.ld3 import checkpoint
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

        monkeypatch.setattr(files_module, "open", fake_open, raising=False)  # undone after the test
        return seen

    return arm


def no_debris(cache):
    return [p for p in cache.rglob("*") if p.name.endswith(".tmp")] == []


def rerun_after_freeing_space(stage, kind, cache, session_stores, monkeypatch):
    """The disk has space again: the same command completes with the tensors of a run that never failed."""
    monkeypatch.delattr(files_module, "open")
    assert run_cli(stage, cache=cache) == 0
    ref = only_artifact(session_stores(stage), kind)
    art = only_artifact(cache, kind)
    assert (art / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()


def test_full_disk_while_writing_shards_keeps_finished_shards(store_copy, session_stores, disk_full, monkeypatch,
                                                              capsys):
    cache = store_copy("train")
    ref = only_artifact(session_stores("sample"), "samples")

    disk_full("shard_00001.npz")
    line = run_refused(capsys, "sample", cache=cache)
    part = next(cache.glob("*/samples/*.partial"))
    assert f"no space left on the device while writing {part / 'shard_00001.npz'}" in line, line
    assert "rerun the same command to resume" in line
    assert sorted(p.name for p in part.iterdir()) == ["shard_00000.npz"] and no_debris(cache)
    first = (part / "shard_00000.npz").read_bytes()

    disk_full("shard_00003.npz")  # a second attempt runs out of space later
    assert run_cli("sample", cache=cache) == 2
    assert sorted(p.name for p in part.iterdir()) == [f"shard_0000{k}.npz" for k in range(3)] and no_debris(cache)
    assert (part / "shard_00000.npz").read_bytes() == first, "a finished shard was rewritten"
    assert artifacts(cache, "samples") == []

    monkeypatch.delattr(files_module, "open")  # space freed
    assert run_cli("sample", cache=cache) == 0
    art = only_artifact(cache, "samples")
    assert art.name == ref.name and (art / "shard_00000.npz").read_bytes() == first
    assert_same_shards(art, ref)
    assert no_debris(cache) and not list(cache.glob("*/samples/*.partial"))


def test_full_disk_while_publishing_samples_keeps_every_shard(store_copy, disk_full, monkeypatch, capsys):
    cache = store_copy("train")
    disk_full("manifest.json")  # the last write of publishing, after the shards moved into the artifact
    assert "no space left on the device while writing" in run_refused(capsys, "sample", cache=cache)
    part = next(cache.glob("*/samples/*.partial"))
    shards = sorted(part.glob("shard_*.npz"))
    assert len(shards) == 6 and artifacts(cache, "samples") == [] and no_debris(cache)
    inodes = {p.name: p.stat().st_ino for p in shards}

    monkeypatch.delattr(files_module, "open")
    assert run_cli("sample", cache=cache) == 0
    art = only_artifact(cache, "samples")
    assert {p.name: p.stat().st_ino for p in art.glob("shard_*.npz")} == inodes, "the shards were resampled"


def test_full_disk_while_teacher_sampling_keeps_finished_batches(store_copy, session_stores, disk_full, monkeypatch,
                                                                 capsys):
    cache = store_copy(None)
    disk_full("batch_00000004.safetensors")
    assert "batch_00000004.safetensors" in run_refused(capsys, "teacher-sample", cache=cache)
    part = next(cache.glob("*/teacher/*.partial"))
    assert sorted(p.name for p in part.iterdir()) == ["batch_00000000.safetensors", "batch_00000002.safetensors"]
    assert no_debris(cache) and artifacts(cache, "teacher") == []
    rerun_after_freeing_space("teacher-sample", "teacher", cache, session_stores, monkeypatch)


def test_full_disk_while_saving_training_state_keeps_the_last_state(store_copy, session_stores, disk_full,
                                                                    monkeypatch, capsys):
    cache = store_copy("teacher-sample")
    monkeypatch.setattr(checkpoint, "SAVE_EVERY_S", 0.0)  # save the state after every iteration
    writes = disk_full("state.safetensors", nth=4)
    assert "state.safetensors" in run_refused(capsys, "train", cache=cache)
    assert len(writes) == 5  # 3 states saved, the 4th failed, and so did the save on the way out
    state = next(cache.glob("*/schedules/*.partial/state.safetensors"))
    assert json.loads(read_metadata(state)["ld3_train_state"])["iteration"] == 3, "the last good state is kept"
    assert no_debris(cache) and artifacts(cache, "schedules") == []
    rerun_after_freeing_space("train", "schedules", cache, session_stores, monkeypatch)
