"""The restricted unpickler: hostile pickles are refused without side effects; EDM structure and tensors survive."""
from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess

import edm_testlib as lib
import numpy as np
import pytest
import torch

from ld3_cli.errors import UnsafeCheckpointError
from ld3_cli.models.edm.unpickler import ALLOWED_GLOBALS, PersistentRecord, find_network_record, restricted_load


class _Shell:
    """Unpickling this with plain pickle would run a shell command creating ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


class _Builtin:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def test_os_system_reduce_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"ema": _Shell(marker)})
    with pytest.raises(UnsafeCheckpointError, match=r"'posix\.system'|'os\.system'|'nt\.system'"):
        restricted_load(blob)
    assert not marker.exists()


@pytest.mark.parametrize("fn", [builtins.eval, builtins.exec, builtins.open, builtins.__import__, getattr])
def test_builtin_callables_are_refused(tmp_path, fn):
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    blob = pickle.dumps(_Builtin(fn, code), protocol=2)
    with pytest.raises(UnsafeCheckpointError, match=rf"'(builtins|io)\.{fn.__name__}'"):
        restricted_load(blob)
    assert not marker.exists()


def test_subprocess_global_is_named_in_the_error():
    blob = pickle.dumps(subprocess.Popen)  # a reference to the class is enough to be refused
    with pytest.raises(UnsafeCheckpointError, match=r"subprocess\.Popen"):
        restricted_load(blob, name="evil.pkl")


def test_hostile_object_nested_inside_an_edm_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    blob = lib.edm_style_pickle(net, kwargs, extra={"augment_pipe": _Shell(marker)})
    with pytest.raises(UnsafeCheckpointError, match="system"):
        restricted_load(blob)
    assert not marker.exists()


def test_pickled_module_source_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    src = f"open({str(marker)!r}, 'w').write('executed')\nclass VPPrecond: pass\n"
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    obj = restricted_load(lib.edm_style_pickle(net, kwargs, module_src=src))
    assert not marker.exists()
    rec = find_network_record(obj)
    assert isinstance(rec, PersistentRecord)
    assert rec.class_name == "VPPrecond" and rec.version == 6 and rec.module_name == "training.networks"
    assert rec.init_kwargs == kwargs
    assert src not in repr(vars(rec))  # the source is dropped, not kept around
    assert rec.children["model"].class_name == "SongUNet"
    assert rec.children["model"].children["enc"].class_name == "ModuleDict"
    # numpy scalars come back as Python numbers; EasyDict as a plain dict
    block = rec.children["model"].children["enc"].children["8x8_block0"]
    assert block.attribute("skip_scale") == pytest.approx(0.5 ** 0.5)
    assert isinstance(obj["dataset_kwargs"], dict)
    assert dict(obj["dataset_kwargs"]) == {"path": "datasets/x.zip", "resolution": 8}
    # the recorded tensors are exactly the network's state dict
    tensors = rec.tensors()
    sd = net.state_dict()
    assert set(tensors) == set(sd)
    assert all(torch.equal(tensors[k], sd[k]) for k in sd)


def test_tensors_round_trip_bit_exactly():
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    data = {
        "f32": base,
        "noncontig": base.t(),
        "view": base[1:3, 2:],
        "f16": base.half(),
        "i64": torch.arange(7),
        "bool": base > 0,
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(base.clone(), requires_grad=False),
    }
    out = restricted_load(pickle.dumps(data, protocol=4))
    for k, v in data.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and torch.equal(out[k], v.detach()), k


def test_numpy_scalars_and_arrays_load_but_object_arrays_do_not():
    data = {"f": np.float64(0.25), "i": np.int64(-3), "a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    out = restricted_load(pickle.dumps(data))
    assert out["f"] == 0.25 and out["i"] == -3
    assert np.array_equal(out["a"], data["a"]) and out["a"].dtype == np.float32
    with pytest.raises(UnsafeCheckpointError, match="numpy dtype"):
        restricted_load(pickle.dumps(np.array([object()], dtype=object)))


def test_hostile_inner_storage_payload_is_refused(tmp_path):
    """A storage whose serialized bytes hide a code-executing pickle is stopped by the weights-only inner load."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Shell(marker), protocol=2)

    class _Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (inner,)

    with pytest.raises(UnsafeCheckpointError):
        restricted_load(pickle.dumps(_Storage()))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_geometry_beyond_its_storage_is_refused():
    storage = torch.arange(4, dtype=torch.float32).storage()

    class _Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (100,), (1,), False, None)

    with pytest.raises(UnsafeCheckpointError, match="exceeds its storage"):
        restricted_load(pickle.dumps(_Tensor()))


def test_allow_list_is_small_and_names_no_code_runners():
    modules = {m for m, _ in ALLOWED_GLOBALS}
    assert not modules & {"os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "pickle", "types"}
    assert ("builtins", "eval") not in ALLOWED_GLOBALS and ("builtins", "getattr") not in ALLOWED_GLOBALS
    assert len(ALLOWED_GLOBALS) < 40


def test_file_without_a_network_is_rejected_clearly(tmp_path):
    with pytest.raises(UnsafeCheckpointError, match=r"keys \['a'\].*not an EDM network pickle"):
        find_network_record(restricted_load(io.BytesIO(pickle.dumps({"a": 1}))))


def test_cyclic_module_records_fail_cleanly():
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    rec = find_network_record(restricted_load(lib.edm_style_pickle(net, kwargs)))
    rec.children["model"].state["_modules"]["loop"] = rec  # a hostile file can build such a cycle
    with pytest.raises(UnsafeCheckpointError, match="nest deeper"):
        rec.tensors()
