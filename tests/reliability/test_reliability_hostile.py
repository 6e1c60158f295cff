"""Hostile files: a checkpoint (or shard) whose unpickling would run code is refused, the code never runs.

Every payload, when unpickled the ordinary way, creates a marker file; the test first proves that on
a copy (so the payload is live), then hands the file to ``ld3`` and checks the command exits 2 with
one error line and the marker never appears.  A static scan of the package keeps it that way: no
``torch.load`` without ``weights_only=True``, no unrestricted ``pickle`` load, no ``allow_pickle=True``.
"""
from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_testlib import artifacts, one_error_line, only_artifact, run_refused

import ld3_cli
from ld3_cli.cli.main import main

PACKAGE = Path(ld3_cli.__file__).resolve().parent


class Payload:
    """Unpickling this object runs ``exec``: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def proven_live(tmp_path, load, make) -> Path:
    """Write a payload file with ``make(path, payload)`` and check ``load(path)`` really runs it."""
    probe, marker = tmp_path / "probe.bin", tmp_path / "probe-ran"
    make(probe, Payload(marker))
    load(probe)
    assert marker.is_file(), "the payload must be live, or this test proves nothing"
    return marker


def _plain_pickle(path, obj):
    path.write_bytes(pickle.dumps({"ema": obj}))


def _torch_zip(path, obj):
    torch.save({"state": obj}, path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("model,make,load", [
    ("edm_cifar10", _plain_pickle, lambda p: pickle.loads(p.read_bytes())),  # an EDM network pickle
    ("mnist_ddpm", _plain_pickle, lambda p: pickle.loads(p.read_bytes())),  # a legacy (non-zip) torch file
    ("mnist_ddpm", _torch_zip, lambda p: torch.load(p, weights_only=False)),  # a torch.save zip
])
def test_checkpoint_that_runs_code_is_refused_unexecuted(model, make, load, tmp_path, capsys):
    proven_live(tmp_path, load, make)
    marker, ckpt = tmp_path / "ran", tmp_path / "checkpoint.bin"
    make(ckpt, Payload(marker))
    cache = tmp_path / "cache"
    assert main(["teacher-sample", f"model={model}", f"model.path={ckpt}", "teacher.n=4", "progress=false",
                 "device=cpu", f"cache_dir={cache}"]) == 2
    line = one_error_line(capsys.readouterr().err, "teacher-sample")
    assert str(ckpt) in line, line
    assert not marker.exists(), "the checkpoint's code ran"
    assert artifacts(cache, "teacher") == []


def test_fid_weights_that_run_code_are_refused_unexecuted(tmp_path, capsys):
    proven_live(tmp_path, lambda p: torch.load(p, weights_only=False), _torch_zip)
    marker, weights = tmp_path / "ran", tmp_path / "pt_inception.pth"
    _torch_zip(weights, Payload(marker))
    out, images = tmp_path / "stats.npz", tmp_path / "images.npz"
    np.savez(images, x=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    assert main(["fid-ref", f"eval.inception_weights={weights}", f"fid_ref.source={images}", f"fid_ref.out={out}",
                 f"cache_dir={tmp_path / 'cache'}"]) == 2
    line = one_error_line(capsys.readouterr().err, "fid-ref")
    assert f"{weights} cannot be loaded as plain tensors" in line and "replace it with" in line, line
    assert not marker.exists() and not out.exists()


def test_sample_shard_with_pickled_objects_is_refused_unexecuted(store_copy, tmp_path, capsys):
    def make(path, obj):
        buf = io.BytesIO()
        np.savez(buf, images=np.array([obj], dtype=object), seeds=np.arange(4))
        path.write_bytes(buf.getvalue())

    proven_live(tmp_path, lambda p: np.load(p, allow_pickle=True)["images"], make)
    cache = store_copy("sample")
    samples = only_artifact(cache, "samples")
    marker = tmp_path / "ran"
    make(samples / "shard_00001.npz", Payload(marker))
    line = run_refused(capsys, "eval", cache=cache)
    assert f"unreadable shard {samples / 'shard_00001.npz'}" in line and "Object arrays cannot be loaded" in line
    assert not marker.exists()
    assert artifacts(cache, "eval") == []


# -- static scan of the package -------------------------------------------------------------------------
RESTRICTED_UNPICKLER = PACKAGE / "models" / "edm" / "unpickler.py"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def _kw(node, name):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_no_unsafe_deserialisation_anywhere_in_the_package():
    problems, torch_loads = [], 0
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    for path in files:
        src = path.read_text()
        tree = ast.parse(src)
        where = path.relative_to(PACKAGE)
        for node, owner, name in _calls(tree):
            if (owner, name) == ("torch", "load"):
                torch_loads += 1
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if owner in ("pickle", "_pickle", "dill", "cloudpickle") and name in ("load", "loads"):
                problems.append(f"{where}:{node.lineno}: unrestricted {owner}.{name}")
            if name in ("load", "loads") and owner in ("joblib", "marshal", "shelve"):
                problems.append(f"{where}:{node.lineno}: {owner}.{name} can run code")
            ap = _kw(node, "allow_pickle")
            if isinstance(ap, ast.Constant) and ap.value is True:
                problems.append(f"{where}:{node.lineno}: allow_pickle=True")
            if name == "Unpickler" and path != RESTRICTED_UNPICKLER:
                problems.append(f"{where}:{node.lineno}: a pickle.Unpickler outside the restricted unpickler")
        for imp in ast.walk(tree):  # `from torch import load` would hide a call from the check above
            if isinstance(imp, ast.ImportFrom) and imp.module == "torch" and any(a.name == "load" for a in imp.names):
                problems.append(f"{where}:{imp.lineno}: from torch import load")
    assert torch_loads >= 3, "the scan must see the package's torch.load calls"
    assert problems == []
    # the one unpickler allowed resolves globals from an allow-list
    assert "def find_class" in RESTRICTED_UNPICKLER.read_text()
