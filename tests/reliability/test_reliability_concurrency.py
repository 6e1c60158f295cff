"""Two processes producing the same artifact end with one valid artifact and no partial files.

Two ``ld3`` subprocesses start together on one store (what a parallel multirun launcher does when
two jobs share an input).  The producer lock lets one of them compute; the other waits, finds the
finished artifact and reuses it.  Both exit 0 and name the same artifact, which equals an
uninterrupted single run exactly; no ``.partial`` directory or temporary file remains.
"""
from __future__ import annotations

from reliability_testlib import assert_same_shards, finish, leftovers, only_artifact, spawn


def run_pair(stage, cache, kind, written):
    """Two ``ld3 <stage>`` processes on ``cache``: both exit 0 and name the one ``kind`` artifact, and only
    one of them logs ``written`` (computes it).  Returns the artifact."""
    procs = [spawn(stage, cwd=cache.parent, pace=0.02) for _ in range(2)]
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err
    art = only_artifact(cache, kind)
    assert all(out.strip().endswith(str(art)) for _, out, _ in results)
    produced = [err.count(written) for _, _, err in results]
    assert sorted(produced) == [0, 1], "exactly one process computes, the other reuses its artifact"
    return art


def test_two_teacher_sample_processes_make_one_artifact(store_copy, session_stores):
    cache = store_copy(None)
    art = run_pair("teacher-sample", cache, "teacher", "teacher samples (8) written to")
    ref = only_artifact(session_stores("teacher-sample"), "teacher")
    assert (art / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()
    assert leftovers(cache) == []


def test_two_sample_processes_make_one_artifact(store_copy, session_stores):
    cache = store_copy("train")
    art = run_pair("sample", cache, "samples", "samples (24) written to")
    ref = only_artifact(session_stores("sample"), "samples")
    assert_same_shards(art, ref)
    assert len(list(art.glob("shard_*.npz"))) == 6
    assert leftovers(cache) == []
