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
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from ..errors import CorruptArtifactError, MissingArtifactError
from .files import atomic_write_bytes, atomic_write_text, load_tensors, save_tensors
from .keys import make_key, to_plain

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
FIT_KIND = "fit"
FIT_COMMAND = "(fitted automatically at load)"


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
        self.made = False  # True when :meth:`Store.get_or_make` produced it in this call

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

    # -- producing ---------------------------------------------------------------------------
    def get_or_make(self, model_key: str, kind: str, fields: Mapping[str, Any], make: Callable[[], Mapping[str, Any]],
                    *, producer: str = "", prepare: Optional[Callable[[], Any]] = None) -> Artifact:
        """The artifact of ``fields``, made at most once however many processes ask for it.

        An existing artifact is opened (validated; ``producer`` is the command errors name to rebuild
        it).  A missing one: ``prepare()`` runs first (what must fail before anything is written, e.g.
        loading the model); then, holding the key's lock, the store looks again (another process may
        have made it meanwhile) and otherwise calls ``make()``, which returns the keyword arguments of
        :meth:`write` (``tensors``, ``files``, ``inputs``, ``info``, ``from_dir``).  The artifact is
        published with ``producer`` as its command, the key's work-in-progress directory
        (:meth:`partial_path`) is removed, and the returned artifact has ``made = True``.
        """
        fields = to_plain(dict(fields))
        key = make_key(fields)
        if not self.exists(model_key, kind, key):
            if prepare is not None:
                prepare()
            with self.lock(model_key, kind, key):
                if not self.exists(model_key, kind, key):
                    art = self.write(model_key, kind, fields, command=producer or None, **make())
                    shutil.rmtree(self.partial_path(model_key, kind, key), ignore_errors=True)
                    art.made = True
                    return art
        return self.open(model_key, kind, key, producer=producer)

    def fit_cache(self) -> Callable[..., dict]:
        """A cache for data a model builder derives (e.g. a mixture's fit), as the builder receives it.

        ``cache(owner, fields, compute, expected=None) -> tensors``: the tensors ``compute()``
        returns, made once under ``<root>/<owner>/fit/<key of fields>/`` and read back validated
        (``expected`` shapes, as for :meth:`Artifact.tensors`).
        """
        def cache(owner: str, fields: Mapping[str, Any], compute: Callable[[], dict], expected=None) -> dict:
            art = self.get_or_make(owner, FIT_KIND, fields, lambda: {"tensors": compute()}, producer=FIT_COMMAND)
            return art.tensors(expected)
        return cache

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

    # -- writing ----------------------------------------------------------------------------
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
            manifest = _manifest(key, kind, model_key, config, inputs, info, command)
            atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
            _rename_into_place(tmp, final)
        except BaseException:
            if moved and tmp.is_dir() and not Path(from_dir).exists():
                _give_back(tmp, from_dir, [MANIFEST, *(files or {})] + ([TENSORS] if tensors else []))
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.open(model_key, kind, key)

    def remove(self, model_key: str, kind: str, key: str) -> None:
        shutil.rmtree(self.path(model_key, kind, key), ignore_errors=True)


def _manifest(key: str, kind: str, model_key: str, config: dict, inputs, info, command: Optional[str]) -> dict:
    return {
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


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Publish ``tmp`` as ``final``; another producer's finished copy wins, a broken leftover is replaced."""
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


def _give_back(tmp: Path, from_dir: Path, ours: list[str]) -> None:
    """Move a failed publication's directory back to ``from_dir`` without the files the store added."""
    for name in ours:  # give back exactly what the caller handed over
        with contextlib.suppress(FileNotFoundError):
            (tmp / name).unlink()
    with contextlib.suppress(OSError):
        os.rename(tmp, from_dir)


def current_command() -> str:
    """The command line that is running, as the user would retype it."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("ld3") or argv[0].endswith("__main__.py") or argv[0] == "-m"):
        argv[0] = "ld3"
    return " ".join(argv)
