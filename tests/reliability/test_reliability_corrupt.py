"""Corrupted store entries are detected by the stage that reads them, never used.

Each case damages one artifact of a finished pipeline store and runs the CLI stage that reads it
(train reads the teacher, sample the learned schedule, eval the sample shards).  The command must
exit 2 with one ``ld3 <stage>: error:`` line that names the damaged path and the ``ld3`` command
that rebuilds it, and must not produce anything from the damaged input.  Following the printed
fix (delete the directory, run the command) repairs the store.
"""
from __future__ import annotations

import io
import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from reliability_testlib import artifacts, leftovers, only_artifact, run_cli, run_refused

from ld3_cli.cli.main import main
from ld3_cli.store import load_tensors, save_tensors


# -- ways to damage an artifact ----------------------------------------------------------------------
def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncate_tensors(art):
    truncate(art / "tensors.safetensors")


def bad_json(art):
    (art / "manifest.json").write_text('{"key": "abc", "config": {')


def change_config(art, field, value):
    m = json.loads((art / "manifest.json").read_text())
    m["config"][field] = value  # valid JSON, but the config no longer hashes to the directory's key
    (art / "manifest.json").write_text(json.dumps(m))


def replace_tensor(art, name, fn):
    t = load_tensors(art / "tensors.safetensors")
    t[name] = fn(t[name])
    save_tensors(art / "tensors.safetensors", t)


def rewrite_shard(art, k, images=None, seeds=None):
    p = art / f"shard_{k:05d}.npz"
    with np.load(p) as z:
        imgs, sds = z["images"], z["seeds"]
    buf = io.BytesIO()
    np.savez(buf, images=imgs if images is None else images(imgs), seeds=sds if seeds is None else seeds(sds))
    p.write_bytes(buf.getvalue())


def rebuild_command(line: str, stage: str) -> list[str]:
    """The ``ld3 <stage> ...`` command quoted in an error line, as argv for ``main``."""
    cmds = [c for c in re.findall(r"`([^`]*)`", line) if c.startswith(f"ld3 {stage}")]
    assert cmds, f"no `ld3 {stage} ...` command in: {line}"
    return shlex.split(cmds[0])[1:]


def check_refused(capsys, stage, cache, damaged, rebuild_stage, kind_not_made, needle):
    """``ld3 <stage>`` exits 2 with one line naming ``damaged`` and ``ld3 <rebuild_stage>``; makes no
    ``kind_not_made``."""
    line = run_refused(capsys, stage, cache=cache)
    assert str(damaged) in line, line
    assert f"`ld3 {rebuild_stage}" in line, line
    assert needle in line, line
    assert artifacts(cache, kind_not_made) == [], "nothing may be made from a damaged input"
    assert not list(cache.glob(f"*/{kind_not_made}/*.partial"))


def damage_and_check(store_copy, capsys, upto, kind, stage, kind_not_made, damage, needle):
    """Apply ``damage`` to the only ``kind`` artifact of a copy of the ``upto`` store, which ``ld3 <upto>``
    rebuilds; then :func:`check_refused`.  Returns the store."""
    cache = store_copy(upto)
    art = only_artifact(cache, kind)
    damage(art)
    check_refused(capsys, stage, cache, art, upto, kind_not_made, needle)
    return cache


# -- train reading a damaged teacher ----------------------------------------------------------------------
TEACHER_DAMAGE = {
    "truncated_tensors": (truncate_tensors, "unreadable tensor file"),
    "invalid_manifest_json": (bad_json, "invalid manifest"),
    "manifest_key_mismatch": (lambda a: change_config(a, "n", 9), "does not match its key"),
    "noise_of_wrong_shape": (lambda a: replace_tensor(a, "noises", lambda x: x[..., :7].contiguous()),
                             "has shape [8, 1, 8, 7], expected [8, 1, 8, 8]"),
    "images_missing_a_row": (lambda a: replace_tensor(a, "images", lambda x: x[:7].clone()),
                             "has shape [7, 1, 8, 8], expected [8, None, None, None]"),
}


@pytest.mark.parametrize("damage", list(TEACHER_DAMAGE))
def test_train_refuses_a_damaged_teacher(damage, store_copy, capsys):
    damage_and_check(store_copy, capsys, "teacher-sample", "teacher", "train", "schedules", *TEACHER_DAMAGE[damage])


# -- sample reading a damaged learned schedule ---------------------------------------------------------------
def _sigmas(fn):
    return lambda a: replace_tensor(a, "sigmas", fn)


SCHEDULE_DAMAGE = {
    "truncated_tensors": (truncate_tensors, "unreadable tensor file"),
    "invalid_manifest_json": (bad_json, "invalid manifest"),
    "manifest_key_mismatch": (lambda a: change_config(a, "nfe", 6), "does not match its key"),
    "wrong_number_of_steps": (_sigmas(lambda s: s[:-1].clone()), "has shape [5], expected [6]"),
    "not_strictly_decreasing": (_sigmas(lambda s: s[[0, 2, 1, 3, 4, 5]].clone()), "must be strictly decreasing"),
    "above_sigma_max": (_sigmas(lambda s: torch.cat([s[:1] * 2, s[1:]])), "leaves the model's range"),
    "below_sigma_min": (_sigmas(lambda s: torch.cat([s[:-1], s[-1:] / 4])), "leaves the model's range"),
    "nan_sigma": (_sigmas(lambda s: s.index_fill(0, torch.tensor([2]), float("nan"))), "holds NaN/Inf"),
}


@pytest.mark.parametrize("damage", list(SCHEDULE_DAMAGE))
def test_sample_refuses_a_damaged_learned_schedule(damage, store_copy, capsys):
    damage_and_check(store_copy, capsys, "train", "schedules", "sample", "samples", *SCHEDULE_DAMAGE[damage])


# -- eval reading damaged sample shards -----------------------------------------------------------------------
SAMPLES_DAMAGE = {
    "truncated_shard": (lambda a: truncate(a / "shard_00001.npz"), "unreadable shard"),
    "missing_shard": (lambda a: (a / "shard_00002.npz").unlink(), "unreadable shard"),
    "shards_swapped": (lambda a: [(a / "shard_00000.npz").rename(a / "x"), (a / "shard_00001.npz").rename(
        a / "shard_00000.npz"), (a / "x").rename(a / "shard_00001.npz")], "expected uint8 [4, 8, 8, 1] for seeds"),
    "shard_images_of_wrong_size": (lambda a: rewrite_shard(a, 1, images=lambda x: x[:, :, :7].copy()),
                                   "holds uint8 images [4, 8, 7, 1]"),
    "shard_missing_an_image": (lambda a: rewrite_shard(a, 2, images=lambda x: x[:3], seeds=lambda s: s[:3]),
                               "holds uint8 images [3, 8, 8, 1]"),
    "invalid_manifest_json": (bad_json, "invalid manifest"),
}


@pytest.mark.parametrize("damage", list(SAMPLES_DAMAGE))
def test_eval_refuses_damaged_samples(damage, store_copy, capsys):
    cache = damage_and_check(store_copy, capsys, "sample", "samples", "eval", "eval", *SAMPLES_DAMAGE[damage])
    assert not (cache / "results.csv").exists()


# -- eval reading its other cached inputs ------------------------------------------------------------------
def _held_out_teacher(cache):
    return next(a for a in artifacts(cache, "teacher") if json.loads((a / "manifest.json").read_text())[
        "config"]["seed_start"] == 1_000_000)


def _exact_reference(cache):
    """The statistics fd_exact compares with (not the noise floor's exact set, which has a "draw" field)."""
    configs = {a: json.loads((a / "manifest.json").read_text())["config"] for a in artifacts(cache, "refs")}
    return next(a for a, c in configs.items() if c["kind"] == "exact_pixels" and "draw" not in c)


@pytest.mark.parametrize("damage", ["reference_statistics_of_wrong_dimension", "truncated_held_out_teacher"])
def test_eval_refuses_damaged_cached_inputs(damage, store_copy, capsys):
    cache = store_copy("eval")
    for art in artifacts(cache, "eval"):  # the metrics themselves would be reused without reading anything
        shutil.rmtree(art)
    if damage == "truncated_held_out_teacher":
        damaged, needle = _held_out_teacher(cache), "unreadable tensor file"
        truncate(damaged / "tensors.safetensors")
    else:
        damaged, needle = _exact_reference(cache), "tensor 'mu' has shape [63], expected [64]"
        replace_tensor(damaged, "mu", lambda m: m[:-1].clone())
        replace_tensor(damaged, "sigma", lambda s: s[:-1, :-1].clone())
    check_refused(capsys, "eval", cache, damaged, "eval", "eval", needle)


# -- the printed fix works ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,upto,kind,rebuild_stage,damage", [
    ("train", "teacher-sample", "teacher", "teacher-sample", lambda a: truncate(a / "tensors.safetensors")),
    ("sample", "train", "schedules", "train", bad_json),
])
def test_following_the_printed_fix_repairs_the_store(stage, upto, kind, rebuild_stage, damage, store_copy, capsys):
    cache = store_copy(upto)
    art = only_artifact(cache, kind)
    tensors = art / "tensors.safetensors"
    good = tensors.read_bytes() if tensors.is_file() else None
    damage(art)
    line = run_refused(capsys, stage, cache=cache)
    assert f"delete {art} and rerun" in line, line
    shutil.rmtree(art)
    assert main(rebuild_command(line, rebuild_stage)) == 0
    rebuilt = only_artifact(cache, kind)
    assert rebuilt == art  # the same key: the rebuild command reproduces exactly the damaged artifact
    if good is not None:
        assert (rebuilt / "tensors.safetensors").read_bytes() == good
    assert run_cli(stage, cache=cache) == 0
    assert leftovers(cache) == []
