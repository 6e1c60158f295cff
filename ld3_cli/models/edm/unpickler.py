"""A restricted unpickler for NVlabs/EDM network pickles (``edm-*.pkl``, ``network-snapshot-*.pkl``).

EDM pickles store each network object as a call to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` where ``meta`` is a dict
``{type: 'class', version, module_src, class_name, state}``: ``module_src`` is the *source code*
of the Python module that defined the class, which EDM's own loader executes.  This module
never executes that source and never imports a global that the pickle names.  Instead:

* ``find_class`` only answers for the explicit table :data:`ALLOWED_GLOBALS`; every other
  global raises :class:`~ld3_cli.errors.UnsafeCheckpointError` naming it;
* the persistence hook is mapped to :func:`_reconstruct_record`, which returns a plain
  :class:`PersistentRecord` (class name, init args/kwargs, attribute state) and drops the source;
* plain torch containers (``torch.nn.ModuleDict`` ...) become :class:`ModuleRecord` placeholders;
* tensors are rebuilt from their serialized storage with ``torch.load(..., weights_only=True)``
  and checked argument by argument; numpy scalars/arrays only for numeric dtypes;
* ``dnnlib.EasyDict`` becomes a plain ``dict``.

The result is plain data (dicts, lists, numbers, strings, tensors, records); the network
is later rebuilt from our own code (:mod:`.networks`, :mod:`.precond`) and its weights copied in.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import types
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ...errors import UnsafeCheckpointError

# ------------------------------------------------------------------------------------------
# Records: what objects of the pickle become.


_MAX_MODULE_DEPTH = 64


class ModuleRecord:
    """Placeholder for a pickled ``torch.nn.Module`` (created by ``NEWOBJ`` + ``BUILD``).

    Attributes:
        class_name: the module's class name (e.g. ``ModuleDict``).
        state: the module's attribute dict as pickled (``_parameters``, ``_buffers``,
            ``_modules``, plain attributes).
    """

    class_name: str = "Module"
    state: Any = types.MappingProxyType({})  # replaced per instance by __init__ / __setstate__

    def __init__(self, class_name: str | None = None, state: dict | None = None):
        if class_name is not None:
            self.class_name = class_name
        self.state = state if state is not None else {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(f"pickled module '{self.class_name}' has a {type(state).__name__} state, "
                                        "not a dict; this is not an EDM network pickle")
        self.state = dict(state)

    # -- the torch.nn.Module bookkeeping ------------------------------------------------------
    def _section(self, key: str) -> dict:
        sec = self.state.get(key) or {}
        if not isinstance(sec, dict):
            raise UnsafeCheckpointError(f"pickled module '{self.class_name}' has a malformed '{key}' entry")
        return sec

    @property
    def children(self) -> dict[str, ModuleRecord]:
        """Sub-modules by attribute name (``None`` entries dropped)."""
        return {k: v for k, v in self._section("_modules").items() if v is not None}

    def tensors(self, prefix: str = "", _depth: int = 0) -> dict[str, torch.Tensor]:
        """The module's ``state_dict``: parameters and persistent buffers, recursively, by dotted name."""
        if _depth > _MAX_MODULE_DEPTH:
            raise UnsafeCheckpointError(f"modules in the checkpoint nest deeper than {_MAX_MODULE_DEPTH} levels "
                                        f"at '{prefix}' (a cycle?); not an EDM network pickle")
        out: dict[str, torch.Tensor] = {}
        non_persistent = self.state.get("_non_persistent_buffers_set") or ()
        if not isinstance(non_persistent, (set, frozenset, list, tuple)):
            raise UnsafeCheckpointError(f"pickled module '{self.class_name}' has a malformed buffer set")
        for name, t in self._section("_parameters").items():
            if t is not None:
                out[prefix + name] = _as_tensor(t, prefix + name)
        for name, t in self._section("_buffers").items():
            if t is not None and name not in non_persistent:
                out[prefix + name] = _as_tensor(t, prefix + name)
        for name, child in self.children.items():
            if not isinstance(child, ModuleRecord):
                raise UnsafeCheckpointError(f"sub-module '{prefix + name}' is a {type(child).__name__}, not a module")
            out.update(child.tensors(prefix + name + ".", _depth + 1))
        return out

    def attribute(self, name: str, default: Any = None) -> Any:
        """A plain (non-torch-internal) attribute of the pickled object."""
        return self.state.get(name, default)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.class_name}, {len(self.children)} children)"


class PersistentRecord(ModuleRecord):
    """What a persistent EDM object becomes: its class name, constructor arguments and state.

    The pickled module source is deliberately not kept.  ``init_args``/``init_kwargs`` are
    the constructor arguments EDM recorded (``_init_args``/``_init_kwargs`` in the state).
    ``module_name`` / ``version`` are copied from the metadata when present.
    """

    def __init__(self, class_name: str, state: dict | None = None, module_name: str | None = None,
                 version: int | None = None):
        super().__init__(class_name, state)
        self.module_name = module_name
        self.version = version

    @property
    def init_args(self) -> tuple:
        args = self.state.get("_init_args")
        return tuple(args) if isinstance(args, (tuple, list)) else ()

    @property
    def init_kwargs(self) -> dict:
        kwargs = self.state.get("_init_kwargs")
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    def as_dict(self) -> dict:
        """``{class_name, init_kwargs, state}`` with ``state`` the tensors (the state dict)."""
        return {"class_name": self.class_name, "init_kwargs": self.init_kwargs, "state": self.tensors()}


def _as_tensor(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise UnsafeCheckpointError(f"entry '{name}' of the checkpoint is a {type(t).__name__}, not a tensor")
    return t


# ------------------------------------------------------------------------------------------
# The allowed callables.  Each validates its arguments; none imports or evaluates anything.


def _reconstruct_record(meta: Any) -> PersistentRecord:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: meta -> record (source dropped)."""
    if not isinstance(meta, dict):
        raise UnsafeCheckpointError("persistent object metadata is not a dict; not an EDM pickle")
    if meta.get("type") != "class":
        raise UnsafeCheckpointError(f"persistent object of type {meta.get('type')!r} is not supported (only 'class')")
    class_name = meta.get("class_name")
    if not isinstance(class_name, str) or not class_name.isidentifier():
        raise UnsafeCheckpointError(f"persistent object has an invalid class name {class_name!r}")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"persistent object '{class_name}' has a non-dict state")
    version = meta.get("version")
    module_name = meta.get("module_name")
    return PersistentRecord(class_name=class_name, state=dict(state),
                            module_name=module_name if isinstance(module_name, str) else None,
                            version=version if isinstance(version, int) else None)


def _module_record_class(class_name: str) -> type:
    """A ModuleRecord subclass standing for torch class ``class_name`` (instantiated by NEWOBJ)."""
    return type(f"{class_name}Record", (ModuleRecord,), {"class_name": class_name})


def _load_storage(data: Any):
    """Stand-in for ``torch.storage._load_from_bytes``: the legacy-serialized storage, loaded weights-only."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafeCheckpointError("a serialized tensor storage is not a bytes object")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(f"a tensor storage in the checkpoint was refused by torch's weights-only "
                                        f"loader: {str(exc).splitlines()[0]}") from None
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafeCheckpointError(f"a serialized storage holds a {type(storage).__name__}, not a storage")
    return storage


def _int_tuple(v: Any, what: str) -> tuple:
    if isinstance(v, torch.Size):
        v = tuple(v)
    if not isinstance(v, (tuple, list)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise UnsafeCheckpointError(f"tensor {what} in the checkpoint is not a tuple of ints")
    return tuple(v)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``; hooks and metadata are ignored."""
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise UnsafeCheckpointError("a tensor in the checkpoint is not backed by a storage")
    if not isinstance(storage_offset, int):
        raise UnsafeCheckpointError("tensor storage offset in the checkpoint is not an int")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise UnsafeCheckpointError("tensor size and stride in the checkpoint have different lengths")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(storage, torch.storage.TypedStorage):
            dtype, untyped = storage.dtype, storage._untyped_storage
        else:
            dtype, untyped = torch.uint8, storage
        itemsize = torch.empty((), dtype=dtype).element_size()
        numel_avail = untyped.nbytes() // itemsize
        if any(s < 0 for s in size) or any(s < 0 for s in stride) or storage_offset < 0:
            raise UnsafeCheckpointError("tensor geometry in the checkpoint has negative entries")
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
        if last >= numel_avail:
            raise UnsafeCheckpointError("tensor geometry in the checkpoint exceeds its storage")
        t = torch.empty((0,), dtype=dtype).set_(untyped, storage_offset, size, stride)
    return t


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None):
    """Stand-in for ``torch._utils._rebuild_parameter`` (and ``..._with_state``): returns the plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafeCheckpointError("a parameter in the checkpoint does not hold a tensor")
    return data


class _TypeMarker:
    """Stands for a class that may only appear as an argument of another allowed callable."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, *args, **kwargs):
        raise UnsafeCheckpointError(f"the checkpoint calls '{self.name}' directly, which ld3 does not allow")

    def __repr__(self) -> str:
        return f"<{self.name}>"


_TENSOR_TYPES = (_TypeMarker("torch.Tensor"), _TypeMarker("torch.nn.parameter.Parameter"))
_NDARRAY = _TypeMarker("numpy.ndarray")


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any):
    """Stand-in for ``torch._tensor._rebuild_from_type_v2`` with only plain tensors/parameters allowed."""
    if func is not _rebuild_tensor or new_type not in _TENSOR_TYPES or not isinstance(args, tuple):
        raise UnsafeCheckpointError("the checkpoint rebuilds a tensor through an unsupported type")
    if state:
        raise UnsafeCheckpointError("the checkpoint attaches Python state to a tensor, which ld3 does not allow")
    return _rebuild_tensor(*args)


_NUMERIC_KINDS = "biufc"


def _np_dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Stand-in for ``numpy.dtype``: numeric dtypes only."""
    if not isinstance(name, str):
        raise UnsafeCheckpointError(f"numpy dtype {name!r} in the checkpoint is not a type code")
    try:
        dt = np.dtype(name)
    except TypeError:
        raise UnsafeCheckpointError(f"numpy dtype {name!r} in the checkpoint is unknown") from None
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise UnsafeCheckpointError(f"numpy dtype {name!r} in the checkpoint is not numeric")
    return dt


def _np_scalar(dtype: Any, data: Any = None):
    """Stand-in for ``numpy.core.multiarray.scalar``: numeric scalars as Python numbers."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise UnsafeCheckpointError("a numpy scalar in the checkpoint is not numeric")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise UnsafeCheckpointError("a numpy scalar in the checkpoint has malformed data")
    return np.frombuffer(bytes(data), dtype=dtype)[0].item()


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: an empty plain ndarray filled by BUILD."""
    if subtype is not _NDARRAY:
        raise UnsafeCheckpointError("the checkpoint reconstructs a numpy array of an unsupported type")
    return np.empty((0,), dtype=np.uint8)


def _set_of(items: Any = ()) -> set:
    """Stand-in for ``builtins.set`` (protocol-2 pickles): a set of strings / numbers only."""
    items = list(items)
    if not all(isinstance(i, (str, int, float)) for i in items):
        raise UnsafeCheckpointError("a set in the checkpoint holds non-primitive items")
    return set(items)


def _codecs_encode(text: Any, encoding: Any = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` (how protocol-2 pickles write bytes): latin-1 text -> bytes only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeCheckpointError("the checkpoint encodes bytes in an unsupported way")
    return text.encode("latin1")


class _EasyDict(dict):
    """``dnnlib.EasyDict`` as a plain dict (attribute state dropped)."""

    def __setstate__(self, state: Any) -> None:
        pass


def _copyreg_reconstructor(cls: Any, base: Any, state: Any):
    """Stand-in for ``copyreg._reconstructor`` (protocol 0/1 pickles of torch containers)."""
    if not (isinstance(cls, type) and issubclass(cls, ModuleRecord)) or base is not object or state is not None:
        raise UnsafeCheckpointError("the checkpoint reconstructs an unsupported object via copyreg")
    return cls.__new__(cls)


_TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")

#: (module, name) -> the object the unpickler hands out.  Nothing else is ever resolved.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_record,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TENSOR_TYPES[0],
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _set_of,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _codecs_encode,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): _NDARRAY,
    **{(mod, "scalar"): _np_scalar for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_reconstruct"): _np_reconstruct for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{("torch.nn.modules.container", n): _module_record_class(n) for n in _TORCH_CONTAINERS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals from :data:`ALLOWED_GLOBALS` only.

    Args:
        file: a binary file object.
        source: a name for the file used in error messages.
    """

    def __init__(self, file: BinaryIO, source: str = "checkpoint"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python-2 names written by protocol < 3 pickles (``__builtin__``, ``copy_reg``) -> Python 3 names
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafeCheckpointError(
                f"{self.source} references the Python global '{module}.{name}', which ld3 refuses to load "
                "(only EDM network pickles are supported; nothing in them is executed); if you trust the file, "
                "convert it to a state dict and load it with model._target_ instead")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.source} uses pickle persistent ids ({str(pid)[:40]!r}); "
                                    "it is not an EDM network pickle")


def restricted_load(source: str | Path | BinaryIO | bytes, name: str | None = None) -> Any:
    """Unpickle ``source`` (a path, bytes or binary file) with :class:`RestrictedUnpickler`.

    Returns plain data where persistent objects are :class:`PersistentRecord` and torch
    containers :class:`ModuleRecord`.  Raises :class:`UnsafeCheckpointError` on any
    global outside :data:`ALLOWED_GLOBALS` (the global is named in the message).
    """
    if isinstance(source, (bytes, bytearray)):
        return RestrictedUnpickler(io.BytesIO(source), name or "checkpoint").load()
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return RestrictedUnpickler(f, name or str(source)).load()
    return RestrictedUnpickler(source, name or "checkpoint").load()


def find_network_record(obj: Any, source: str = "checkpoint",
                        keys: tuple = ("ema", "net", "model")) -> PersistentRecord:
    """The network record of an unpickled EDM file: ``obj['ema']`` (or ``net``/``model``), or ``obj`` itself."""
    if isinstance(obj, PersistentRecord):
        return obj
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), PersistentRecord):
                return obj[k]
        found = sorted(str(k) for k in obj)
        raise UnsafeCheckpointError(f"{source} holds a dict with keys {found} but no EDM network under "
                                    f"{list(keys)}; it is not an EDM network pickle")
    raise UnsafeCheckpointError(f"{source} holds a {type(obj).__name__}, not an EDM network pickle")


__all__: list[str] = [
    "ALLOWED_GLOBALS",
    "ModuleRecord",
    "PersistentRecord",
    "RestrictedUnpickler",
    "find_network_record",
    "restricted_load",
]
