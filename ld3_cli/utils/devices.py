"""The ``device`` setting: ``auto`` (CUDA when available, else CPU), or a torch device of a known type."""
from __future__ import annotations

import torch

from ..errors import ConfigError

DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device(spec: str) -> None:
    """ConfigError unless ``spec`` is ``auto`` or names a device of :data:`DEVICE_TYPES` (``cuda:1``)."""
    spec = str(spec)
    if spec != "auto" and spec.split(":")[0] not in DEVICE_TYPES:
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; got '{spec}'")


def resolve_device(spec: str) -> torch.device:
    """The torch device for ``spec``; ConfigError when it is not available here."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec} but CUDA is not available here; use device=cpu or device=auto")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device={spec} but MPS is not available; use device=cpu or device=auto")
    return dev
