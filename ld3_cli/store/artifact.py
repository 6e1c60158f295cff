"""The on-disk artifact store shared by all stages.

Layout (``root`` is ``cache_dir``)::

    <root>/<model-key>/<kind>/<key>/            a finished artifact
        manifest.json                           config, inputs, versions, time, command
        tensors.safetensors                     its tensors (never pickle)
        ...                                     other files (json, csv, png, npz shards)
    <root>/<model-key>/<kind>/<key>.partial/    work in progress of a resumable producer
    <root>/<model-key>/<kind>/.<key>.lock       held while a producer runs

Guarantees:

* A finished artifact appears atomically: it is assembled in a temporary directory and
  renamed into place, so readers never see half of one.  Concurrent producers of the same
  key each build their own temporary copy; the first rename wins and the others discard
  theirs (identical content by construction).
* Every read validates: the manifest parses, its ``key`` equals the hash of its ``config``
  and the directory name, the tensors load and have the expected shapes.  Failures raise
  :class:`CorruptArtifactError` naming the path and the command that rebuilds it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

from ..errors import CorruptArtifactError, MissingArtifactError
from .keys import make_key, to_plain

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"


def package_versions() -> dict:
    import platform

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        from .. import __version__

        versions["ld3"] = __version__
    except ImportError:  # pragma: no cover
        pass
    for name in ("numpy", "hydra", "omegaconf", "safetensors"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            versions[name] = mod.__version__
    return versions


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


class Artifact:
    """A finished store entry: its directory and validated manifest.

    ``rebuild``: the command that rebuilds it, named in every error about its files -- the reader's
    own producing command when it gave one (it targets the store as it is now, wherever it was
    copied), else the command recorded in the manifest.
    """

    def __init__(self, path: Path, manifest: dict, producer: str = ""):
        self.path = Path(path)
        self.manifest = manifest
        self.rebuild = producer or manifest.get("command") or "the stage that made it"

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    def tensors(self, expected: Optional[Mapping[str, tuple]] = None) -> dict:
        return load_tensors(self.path / TENSORS, expected, self.rebuild)

    def json(self, name: str) -> Any:
        p = self.path / name
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CorruptArtifactError(f"unreadable {p} ({e}); delete {self.path} and rerun "
                                       f"`{self.rebuild}`") from None

    def __repr__(self) -> str:
        return f"Artifact({self.path})"


class Store:
    """Content-addressed artifact store rooted at ``root``."""

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser().resolve()

    # -- paths ------------------------------------------------------------------------------
    def path(self, model_key: str, kind: str, key: str) -> Path:
        return self.root / model_key / kind / key

    def partial_path(self, model_key: str, kind: str, key: str) -> Path:
        return self.root / model_key / kind / f"{key}.partial"

    # -- reading ----------------------------------------------------------------------------
    def exists(self, model_key: str, kind: str, key: str) -> bool:
        return (self.path(model_key, kind, key) / MANIFEST).is_file()

    def open(self, model_key: str, kind: str, key: str, producer: str = "") -> Artifact:
        """Return the validated artifact or raise Missing/CorruptArtifactError."""
        path = self.path(model_key, kind, key)
        mpath = path / MANIFEST
        if not mpath.is_file():
            how = f"; produce it with `{producer}`" if producer else ""
            raise MissingArtifactError(f"no {kind} artifact {model_key}/{kind}/{key} in {self.root}{how}")
        try:
            manifest = json.loads(mpath.read_text())
            if not isinstance(manifest, dict) or "config" not in manifest or "key" not in manifest:
                raise ValueError("manifest lacks 'config' or 'key'")
        except (OSError, ValueError) as e:
            raise CorruptArtifactError(f"invalid manifest {mpath} ({e}); delete {path} and rerun "
                                       f"`{producer or 'the stage that made it'}`") from None
        art = Artifact(path, manifest, producer)
        actual = make_key(manifest["config"])
        if manifest["key"] != key or actual != key:
            raise CorruptArtifactError(f"manifest {mpath} does not match its key (directory {key}, recorded "
                                       f"{manifest['key']}, config hashes to {actual}); delete {path} and rerun "
                                       f"`{art.rebuild}`")
        return art

    def list(self, model_key: str, kind: str) -> list[Path]:
        d = self.root / model_key / kind
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.is_dir() and (p / MANIFEST).is_file())

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, model_key: str, kind: str, key: str) -> Iterator[None]:
        """Exclusive inter-process lock for producing one artifact (blocks until free)."""
        d = self.root / model_key / kind
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f".{key}.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def write(self, model_key: str, kind: str, config: Mapping[str, Any], *,
              tensors: Optional[Mapping[str, torch.Tensor]] = None,
              files: Optional[Mapping[str, bytes | str]] = None,
              inputs: Optional[Mapping[str, str]] = None,
              info: Optional[Mapping[str, Any]] = None,
              command: Optional[str] = None,
              from_dir: Optional[Path] = None) -> Artifact:
        """Publish an artifact atomically and return it.

        ``config``: exactly the determining fields (its hash is the key).  ``files``: extra
        files by name.  ``from_dir``: a directory whose files (e.g. shards) become part of the
        artifact (it is moved, not copied; if publishing fails it is moved back, so the work in
        it is never lost).  ``info``: non-determining facts (timings, metrics).
        """
        config = to_plain(dict(config))
        key = make_key(config)
        final = self.path(model_key, kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        moved = False
        try:
            if from_dir is not None:
                shutil.move(str(from_dir), str(tmp))
                moved = True
            else:
                tmp.mkdir()
            if tensors:
                save_tensors(tmp / TENSORS, tensors)
            for name, data in (files or {}).items():
                atomic_write_bytes(tmp / name, data.encode() if isinstance(data, str) else data)
            manifest = {
                "key": key,
                "kind": kind,
                "model_key": model_key,
                "config": config,
                "inputs": dict(inputs or {}),
                "info": to_plain(dict(info or {})),
                "command": command if command is not None else current_command(),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": package_versions(),
            }
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / MANIFEST).is_file():  # another producer won the race: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                elif final.exists():  # a stale broken directory: replace it
                    shutil.rmtree(final)
                    os.rename(tmp, final)
                else:
                    raise
        except BaseException:
            if moved and tmp.is_dir() and not Path(from_dir).exists():
                ours = [MANIFEST, *(files or {})] + ([TENSORS] if tensors else [])
                for name in ours:  # give back exactly what the caller handed over
                    with contextlib.suppress(FileNotFoundError):
                        (tmp / name).unlink()
                with contextlib.suppress(OSError):
                    os.rename(tmp, from_dir)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.open(model_key, kind, key)

    def remove(self, model_key: str, kind: str, key: str) -> None:
        shutil.rmtree(self.path(model_key, kind, key), ignore_errors=True)


def current_command() -> str:
    """The command line that is running, as the user would retype it."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("ld3") or argv[0].endswith("__main__.py") or argv[0] == "-m"):
        argv[0] = "ld3"
    return " ".join(argv)
