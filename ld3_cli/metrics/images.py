"""Image layouts accepted by the metrics, and their conversion to float NCHW tensors.

Two layouts are accepted everywhere in :mod:`ld3_cli.metrics`:

* **uint8** images ``[B, H, W, C]`` (or ``[B, H, W]`` for grayscale), values 0..255 — the
  layout of the store's sample shards, of image folders and of EDM / pytorch-fid pipelines;
* **float** images ``[B, C, H, W]`` in ``[-1, 1]`` — the layout of the denoisers' ``x0``.

The layout is told apart by dtype alone.  ``C`` must be 1 or 3; a 1-channel image is
repeated to 3 channels where a network needs RGB.
"""
from __future__ import annotations

import numpy as np
import torch

from ld3_cli.errors import ConfigError


def as_tensor(images) -> torch.Tensor:
    """Return ``images`` (numpy array or tensor) as a tensor without copying where possible."""
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(images))
    raise ConfigError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}; "
                      "pass uint8 [B,H,W,C] or float [B,C,H,W] in [-1,1]")


def to_nchw(images, value_range: str = "unit", device=None, rgb: bool = False) -> torch.Tensor:
    """Convert an image batch to a float32 ``[B, C, H, W]`` tensor.

    ``value_range='unit'`` gives values in ``[0, 1]`` (uint8 ``u`` becomes ``u / 255``, exactly
    what torchvision's ``ToTensor`` does; float ``x`` becomes ``(x + 1) / 2`` clamped to
    ``[0, 1]``).  ``value_range='signed'`` gives ``[-1, 1]`` (uint8 ``u`` becomes
    ``u / 127.5 - 1``; float input is returned unclamped).  With ``rgb=True`` a 1-channel batch
    is repeated to 3 channels.  The conversion happens on ``device`` (uint8 is moved first,
    which is 4x cheaper to transfer).
    """
    if value_range not in ("unit", "signed"):
        raise ValueError(f"value_range must be 'unit' or 'signed', got {value_range!r}")
    x = as_tensor(images)
    if device is not None:
        x = x.to(device)
    if x.dtype == torch.uint8:
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ConfigError(f"uint8 images must be [B,H,W,C] with C in (1, 3) or [B,H,W], got shape "
                              f"{tuple(x.shape)}; transpose channel-first uint8 arrays to channel-last")
        x = x.permute(0, 3, 1, 2).float()
        x = x / 255.0 if value_range == "unit" else x / 127.5 - 1.0
    elif x.is_floating_point():
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"float images must be [B,C,H,W] with C in (1, 3) and values in [-1, 1], got "
                              f"shape {tuple(x.shape)}; convert channel-last float images with permute(0, 3, 1, 2)")
        x = x.float()
        if value_range == "unit":
            x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    else:
        raise ConfigError(f"images must be uint8 [B,H,W,C] or float [B,C,H,W] in [-1,1], got dtype {x.dtype}")
    if rgb and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``[B, C, H, W]`` in ``[-1, 1]`` -> uint8 ``[B, H, W, C]``, rounded as EDM: ``(x * 127.5 + 128).clip``."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
