"""Load NVlabs/EDM checkpoints (``edm-*.pkl``) as ld3 denoisers, without executing anything in them.

Pipeline: :func:`~.unpickler.restricted_load` turns the pickle into plain records ->
:func:`network_from_record` checks the recorded class against our preconditioners / networks,
builds ours from the recorded ``init_kwargs`` and copies the recorded tensors in with
``strict=True`` -> the result is an :class:`~.precond.EDMPrecondBase`, a sigma-space
:class:`~ld3_cli.models.base.Denoiser`.

Model config keys (``configs/model/edm_*.yaml``):

* ``kind: edm``; ``name``: label in tables (default: the file's stem);
* ``path``: the local ``.pkl`` (or a folder holding ``file_name``); ``file_name``; ``url``: the
  official download address; ``download`` (bool): fetch a missing file when the stage allows it;
* ``use_fp16``: override the checkpoint's flag (float16 network on CUDA only), null keeps it;
* ``random_init: true`` with ``precond`` (``VPPrecond`` ...), ``init_kwargs`` (EDM's constructor
  arguments) and ``seed``: a randomly initialised network of that architecture, no file needed.
"""
from __future__ import annotations

import logging
import os
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import torch

from ...errors import ConfigError, MissingFileError
from ...utils.plain import to_plain
from ..registry import BuildContext
from .layers import skip_init
from .networks import NETWORKS
from .precond import PRECONDS, EDMPrecondBase
from .unpickler import PersistentRecord, find_network_record, restricted_load

log = logging.getLogger(__name__)


class EDMArchitectureError(ConfigError):
    """An EDM pickle whose network is not one ld3 implements, or whose weights do not fit it."""


# ------------------------------------------------------------------------------------------
# records -> networks


def _build(cls: type, args: tuple, kwargs: dict, source: str) -> EDMPrecondBase:
    try:
        return cls(*args, **kwargs)
    except TypeError as exc:
        raise EDMArchitectureError(f"{source}: the recorded arguments of {cls.__name__} ({sorted(kwargs)}) do not "
                                   f"fit ld3's implementation ({exc}); this is not a supported EDM network") from None
    except (ValueError, ConfigError) as exc:
        raise EDMArchitectureError(f"{source}: {cls.__name__} cannot be built from the recorded arguments: "
                                   f"{exc}") from None


def _check_state_dict(net: torch.nn.Module, tensors: dict, source: str) -> None:
    """Raise :class:`EDMArchitectureError` naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(f"{k} {tuple(tensors[k].shape)} vs {expected[k]}" for k in set(expected) & set(tensors)
                    if tuple(tensors[k].shape) != expected[k])
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (checkpoint vs ld3)", shapes)):
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            parts.append(f"{label}: {', '.join(items[:6])}{more}")
    raise EDMArchitectureError(f"{source}: the weights do not fit the recorded architecture "
                               f"({type(net).__name__}/{getattr(net, 'model_type', '?')}) -- " + "; ".join(parts)
                               + "; the file is not a supported EDM network or is damaged")


def network_from_record(record: PersistentRecord, use_fp16: bool | None = None,
                        source: str = "checkpoint") -> EDMPrecondBase:
    """Build our preconditioned network for an EDM record and load its recorded weights (strict).

    Raises :class:`EDMArchitectureError` for an unknown class / model type or weights that do not fit.
    """
    cls = PRECONDS.get(record.class_name)
    if cls is None:
        raise EDMArchitectureError(f"{source}: network class '{record.class_name}' is not an EDM preconditioner "
                                   f"ld3 implements ({', '.join(sorted(PRECONDS))})")
    kwargs = dict(record.init_kwargs)
    if not kwargs and not record.init_args:
        raise EDMArchitectureError(f"{source}: the {record.class_name} record carries no constructor arguments "
                                   "(_init_kwargs); it was not saved by EDM's persistence module")
    model_type = kwargs.get("model_type", cls.default_model_type)
    if model_type not in NETWORKS:
        raise EDMArchitectureError(f"{source}: model_type '{model_type}' is not an EDM network ld3 implements "
                                   f"({', '.join(sorted(NETWORKS))})")
    inner = record.children.get("model")
    if inner is not None and getattr(inner, "class_name", model_type) != model_type:
        raise EDMArchitectureError(f"{source}: the network inside {record.class_name} is a "
                                   f"'{inner.class_name}', but its arguments name model_type '{model_type}'")
    if use_fp16 is not None:
        kwargs["use_fp16"] = bool(use_fp16)
    with skip_init():  # the weights come from the checkpoint
        net = _build(cls, record.init_args, kwargs, source)
    tensors = record.tensors()
    _check_state_dict(net, tensors, source)
    net.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in tensors.items()},
                        strict=True, assign=True)
    return net.eval().requires_grad_(False)


def load_edm(path: str | Path, device: str | torch.device = "cpu", *, use_fp16: bool | None = None,
             name: str | None = None) -> EDMPrecondBase:
    """Load an EDM network pickle as a sigma-space denoiser ``D(x, sigma, cond) -> x0`` on ``device``.

    The pickle's ``'ema'`` network is used (or the pickle itself if it holds one network).
    Nothing in the file is executed: see :mod:`.unpickler`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"EDM checkpoint {path} does not exist; pass the path of an edm-*.pkl file")
    record = find_network_record(restricted_load(path, name=str(path)), str(path))
    net = network_from_record(record, use_fp16=use_fp16, source=str(path))
    net.name = name or path.stem
    return net.to(device)


def random_network(precond: str, init_kwargs: Mapping, seed: int = 0,
                   device: str | torch.device = "cpu") -> EDMPrecondBase:
    """A randomly initialised EDM network (``precond`` class name, EDM constructor arguments); same cost as trained."""
    cls = PRECONDS.get(precond)
    if cls is None:
        raise ConfigError(f"model.precond '{precond}' is unknown; choose one of {sorted(PRECONDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = _build(cls, (), dict(init_kwargs), f"model.init_kwargs for {precond}")
    return net.to(device).eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------
# config -> file


def checkpoint_path(cfg: Mapping) -> Path:
    """Where the config expects the checkpoint: ``path`` (a file, or a folder + ``file_name``) or ``file_name``."""
    path, file_name = cfg.get("path"), cfg.get("file_name")
    if not path and not file_name:
        raise ConfigError("an EDM model config needs model.path (the .pkl file) or model.file_name; "
                          "set model.path=/path/to/edm-....pkl")
    p = Path(os.path.expanduser(str(path or file_name)))
    if file_name and p.is_dir():
        p = p / str(file_name)
    return p


def download_file(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temporary name, then rename)."""
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("https", "http", "file"):
        raise ConfigError(f"model.url '{url}' is not an http(s) or file URL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.part{os.getpid()}")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as f:
            while chunk := resp.read(1 << 20):
                f.write(chunk)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MissingFileError(f"downloading {url} failed ({exc}); download it yourself and save it as "
                               f"{dest.resolve()}") from None
    return dest


def ensure_checkpoint(cfg: Mapping, ctx: BuildContext) -> Path:
    """The checkpoint file for ``cfg``, downloaded when ``cfg.download`` and ``ctx.allow_download``; else an error."""
    path = checkpoint_path(cfg)
    if path.is_file():
        return path
    url = cfg.get("url")
    if cfg.get("download") and url and ctx.allow_download:
        return download_file(str(url), path)
    where = f"save it as {path.resolve()}"
    if cfg.get("download") and url:
        raise MissingFileError(f"EDM checkpoint {path} is missing and this command may not download; "
                               f"download {url} and {where}")
    src = f"download it from {url} and {where}" if url else f"{where} (model.url is not set)"
    hint = " (or set model.download=true to fetch it automatically)" if url else ""
    raise MissingFileError(f"EDM checkpoint {path} not found: {src}{hint}; LD3_WEIGHTS=<folder> points the "
                           "edm_* configs at another folder")


def build(cfg: Mapping, ctx: BuildContext) -> EDMPrecondBase:
    """Model-registry builder for ``kind: edm`` (see the module docstring for the keys)."""
    cfg = to_plain(cfg)
    use_fp16 = cfg.get("use_fp16")
    if cfg.get("random_init"):
        init_kwargs = dict(cfg.get("init_kwargs") or {})
        if not init_kwargs:
            raise ConfigError("model.random_init=true needs model.init_kwargs (EDM's constructor arguments, "
                              "see configs/model/edm_cifar10_random.yaml)")
        if use_fp16 is not None:
            init_kwargs["use_fp16"] = bool(use_fp16)
        net = random_network(cfg.get("precond", "VPPrecond"), init_kwargs, int(cfg.get("seed", 0)), ctx.device)
        net.name = str(cfg.get("name") or f"edm-random-{net.precond_name}")
        return net
    path = ensure_checkpoint(cfg, ctx)
    return load_edm(path, ctx.device, use_fp16=use_fp16, name=cfg.get("name"))
