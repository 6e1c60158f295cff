"""Two processes producing the same artifact end with one valid artifact and no partial files.

Two ``ld3`` subprocesses start together on one store (what a parallel multirun launcher does when
two jobs share an input).  The producer lock lets one of them compute; the other waits, finds the
finished artifact and reuses it.  Both exit 0 and name the same artifact, which equals an
uninterrupted single run exactly; no ``.partial`` directory or temporary file remains.
"""
from __future__ import annotations

import numpy as np
from reliability_testlib import finish, leftovers, only_artifact, spawn


def run_pair(stage, cache, pace):
    procs = [spawn(stage, cwd=cache.parent, pace=pace) for _ in range(2)]
    results = [finish(p) for p in procs]
    for code, _, err in results:
        assert code == 0, err
    return results


def test_two_teacher_sample_processes_make_one_artifact(store_copy, session_stores):
    cache = store_copy(None)
    results = run_pair("teacher-sample", cache, pace=0.02)
    art = only_artifact(cache, "teacher")
    assert all(out.strip().endswith(str(art)) for _, out, _ in results)
    produced = [err.count("teacher samples (8) written to") for _, _, err in results]
    assert sorted(produced) == [0, 1], "exactly one process computes, the other reuses its artifact"
    ref = only_artifact(session_stores("teacher-sample"), "teacher")
    assert (art / "tensors.safetensors").read_bytes() == (ref / "tensors.safetensors").read_bytes()
    assert leftovers(cache) == []


def test_two_sample_processes_make_one_artifact(store_copy, session_stores):
    cache = store_copy("train")
    results = run_pair("sample", cache, pace=0.02)
    art = only_artifact(cache, "samples")
    assert all(out.strip().endswith(str(art)) for _, out, _ in results)
    produced = [err.count("samples (24) written to") for _, _, err in results]
    assert sorted(produced) == [0, 1], "exactly one process computes, the other reuses its artifact"
    ref = only_artifact(session_stores("sample"), "samples")
    names = sorted(p.name for p in art.glob("shard_*.npz"))
    assert names == sorted(p.name for p in ref.glob("shard_*.npz")) and len(names) == 6
    for name in names:
        with np.load(art / name) as a, np.load(ref / name) as b:
            np.testing.assert_array_equal(a["images"], b["images"])
            np.testing.assert_array_equal(a["seeds"], b["seeds"])
    assert leftovers(cache) == []
