"""The artifact store: content keys, atomic publication, validation on read."""
import json
import os

import pytest
import torch

from ld3_cli.errors import CorruptArtifactError, MissingArtifactError
from ld3_cli.store import Store, make_key


def test_keys_change_exactly_when_a_determining_field_changes():
    base = {"solver": {"name": "unipc", "order": 3}, "nfe": 5, "train": {"lr": 0.005, "r": None}}
    same = {"train": {"r": None, "lr": 0.005}, "nfe": 5.0, "solver": {"order": 3, "name": "unipc"}}
    assert make_key(base) == make_key(same)  # key order and 5 vs 5.0 do not matter
    for changed in ({**base, "nfe": 6}, {**base, "solver": {"name": "unipc", "order": 2}},
                    {**base, "train": {"lr": 0.0051, "r": None}}, {**base, "train": {"lr": 0.005, "r": 0}}):
        assert make_key(changed) != make_key(base)


def test_write_then_open_round_trip(tmp_path):
    store = Store(tmp_path)
    cfg = {"a": 1, "b": [1.5, 2]}
    art = store.write("m-1", "teacher", cfg, tensors={"x": torch.arange(6.0).view(2, 3)}, files={"note.txt": "hi"},
                      inputs={"parent": "abc"}, info={"seconds": 1.0}, command="ld3 teacher-sample")
    assert art.path == tmp_path / "m-1" / "teacher" / make_key(cfg)
    again = store.open("m-1", "teacher", make_key(cfg))
    assert torch.equal(again.tensors({"x": (2, 3)})["x"], torch.arange(6.0).view(2, 3))
    m = again.manifest
    assert m["config"] == cfg and m["inputs"] == {"parent": "abc"} and m["command"] == "ld3 teacher-sample"
    assert {"torch", "python"} <= set(m["versions"]) and m["created"]
    assert (art.path / "note.txt").read_text() == "hi"
    assert all(p.suffix == ".lock" for p in art.path.parent.iterdir() if p.name.startswith("."))


def test_missing_artifact_names_the_producing_command(tmp_path):
    with pytest.raises(MissingArtifactError, match="ld3 teacher-sample nfe=5"):
        Store(tmp_path).open("m", "teacher", "0123456789ab", producer="ld3 teacher-sample nfe=5")


def test_interrupted_write_leaves_no_artifact(tmp_path, monkeypatch):
    store = Store(tmp_path)
    import ld3_cli.store.artifact as artifact

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifact, "atomic_write_text", boom)  # the manifest write fails
    with pytest.raises(OSError, match="disk full"):
        store.write("m", "samples", {"k": 1}, tensors={"x": torch.zeros(2)})
    d = tmp_path / "m" / "samples"
    assert not store.exists("m", "samples", make_key({"k": 1}))
    assert [p.name for p in d.iterdir() if not p.name.endswith(".lock")] == []  # no temp dirs left


def test_corruptions_are_detected_with_path_and_rebuild_command(tmp_path):
    store = Store(tmp_path)
    art = store.write("m", "teacher", {"k": 1}, tensors={"x": torch.zeros(4, 2)}, command="ld3 teacher-sample seed=1")
    # truncated tensors
    data = (art.path / "tensors.safetensors").read_bytes()
    (art.path / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArtifactError, match="ld3 teacher-sample seed=1") as e:
        store.open("m", "teacher", art.key).tensors()
    assert str(art.path) in str(e.value)
    # wrong shape
    art2 = store.write("m", "teacher", {"k": 2}, tensors={"x": torch.zeros(4, 2)})
    with pytest.raises(CorruptArtifactError, match="shape"):
        store.open("m", "teacher", art2.key).tensors({"x": (4, 3)})
    # invalid manifest JSON
    art3 = store.write("m", "teacher", {"k": 3})
    (art3.path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptArtifactError, match="invalid manifest"):
        store.open("m", "teacher", art3.key)
    # manifest whose config does not hash to its key
    art4 = store.write("m", "teacher", {"k": 4})
    man = json.loads((art4.path / "manifest.json").read_text())
    man["config"]["k"] = 5
    (art4.path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorruptArtifactError, match="does not match its key"):
        store.open("m", "teacher", art4.key)


def test_concurrent_producers_keep_one_artifact(tmp_path):
    """Two writers of the same key: the second rename finds the first and discards its own copy."""
    store = Store(tmp_path)
    a = store.write("m", "x", {"k": 1}, tensors={"t": torch.ones(3)})
    b = store.write("m", "x", {"k": 1}, tensors={"t": torch.ones(3)})
    assert a.path == b.path
    entries = os.listdir(tmp_path / "m" / "x")
    assert [e for e in entries if not e.endswith(".lock")] == [a.key]


def test_get_or_make_makes_once_and_then_opens(tmp_path):
    store = Store(tmp_path)
    calls = []

    def make():
        calls.append("make")
        part = store.partial_path("m", "refs", make_key({"k": 2}))
        part.mkdir(parents=True)  # work in progress, removed once published
        return {"tensors": {"x": torch.ones(3)}, "info": {"n": 3}}

    art = store.get_or_make("m", "refs", {"k": 2}, make, producer="ld3 eval", prepare=lambda: calls.append("prep"))
    assert calls == ["prep", "make"] and art.made and art.manifest["command"] == "ld3 eval"
    assert torch.equal(art.tensors({"x": (3,)})["x"], torch.ones(3)) and art.manifest["info"] == {"n": 3}
    assert not store.partial_path("m", "refs", art.key).exists()
    again = store.get_or_make("m", "refs", {"k": 2}, make, producer="ld3 eval", prepare=lambda: calls.append("prep"))
    assert calls == ["prep", "make"] and not again.made and again.path == art.path  # found: nothing runs


def test_get_or_make_looks_again_under_the_lock(tmp_path, monkeypatch):
    """A producer that waited for the lock finds the artifact another process made meanwhile."""
    store = Store(tmp_path)
    real_lock = store.lock

    def lock_after_another_made_it(*args):
        store.write("m", "refs", {"k": 3}, tensors={"x": torch.zeros(1)}, command="other")
        return real_lock(*args)

    monkeypatch.setattr(store, "lock", lock_after_another_made_it)
    art = store.get_or_make("m", "refs", {"k": 3}, lambda: pytest.fail("made twice"), producer="ld3 eval")
    assert not art.made and art.manifest["command"] == "other" and art.rebuild == "ld3 eval"
