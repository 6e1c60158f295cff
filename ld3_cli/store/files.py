"""Files of the store, each written atomically: bytes, text, safetensors (never pickle).

Every file the store writes goes through :func:`atomic_write_bytes`: a temporary sibling, then
``os.replace``, so a reader never sees half a file and an interrupted write leaves the old one.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Mapping, Optional

import torch

from ..errors import CorruptArtifactError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and ``os.replace`` (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:  # e.g. ENOSPC from write()
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Optional[dict] = None) -> None:
    """Atomically write tensors as safetensors (contiguous CPU copies)."""
    from safetensors.torch import save

    seen: set = set()
    plain = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        if v.data_ptr() in seen:  # safetensors refuses tensors that share memory
            v = v.clone()
        seen.add(v.data_ptr())
        plain[k] = v
    data = save(plain,
                metadata={k: str(v) for k, v in (metadata or {}).items()})
    atomic_write_bytes(path, data)


def load_tensors(path: Path, expected: Optional[Mapping[str, tuple]] = None, rebuild: str = "") -> dict:
    """Load a safetensors file; ``expected`` maps names to shapes (``None`` entries match anything)."""
    from safetensors.torch import load_file

    path = Path(path)
    # the whole directory goes: a finished artifact whose manifest is intact would otherwise be reused
    hint = f"; delete {path.parent} and rerun `{rebuild or 'the stage that made it'}`"
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CorruptArtifactError(f"missing tensor file {path}{hint}") from None
    except Exception as e:  # safetensors raises its own error types for truncated / invalid files
        raise CorruptArtifactError(f"unreadable tensor file {path} ({type(e).__name__}: {e}){hint}") from None
    for name, shape in (expected or {}).items():
        if name not in tensors:
            raise CorruptArtifactError(f"{path} lacks tensor '{name}'{hint}")
        got = tuple(tensors[name].shape)
        if shape is not None and (len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got))):
            raise CorruptArtifactError(f"{path}: tensor '{name}' has shape {list(got)}, expected {list(shape)}{hint}")
        if tensors[name].is_floating_point() and not bool(torch.isfinite(tensors[name]).all()):
            raise CorruptArtifactError(f"{path}: tensor '{name}' holds NaN/Inf{hint}")
    return tensors


def read_metadata(path: Path) -> dict:
    """The string metadata of a safetensors file (read from its header only)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise CorruptArtifactError(f"missing tensor file {path}") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error types for damaged headers
        raise CorruptArtifactError(f"unreadable tensor file {path} ({type(e).__name__}: {e})") from None
