"""LPIPS (Zhang et al. 2018) from local weights, as a per-sample distance / training loss.

The network is :class:`lpips.LPIPS`, built with ``pnet_rand=True`` and ``pretrained=False`` so
that lpips neither downloads the torchvision backbone nor loads anything itself; then

* the backbone's ImageNet weights (torchvision's ``vgg16-397923af.pth``,
  ``alexnet-owt-7be5be79.pth`` or ``squeezenet1_1-b8a52dc0.pth``) are read from
  ``backbone_weights`` or the torch hub cache (``$TORCH_HOME/hub/checkpoints/``, where
  torchvision's own download lands) and mapped from torchvision's ``features.{i}.*`` keys to
  lpips' ``slice{k}.{i}.*`` modules;
* the calibrated linear heads are read from the lpips package (``lpips/weights/v0.1/<net>.pth``).

Both with ``torch.load(..., weights_only=True)``.  A missing backbone is a
:class:`MissingFileError` naming the URL and the path; nothing is downloaded.

Inputs: float images ``[B, C, H, W]`` in ``[-1, 1]`` (the denoisers' ``x0`` range), ``C`` in
(1, 3); 1-channel images are repeated to 3 channels.  Images smaller than 32 pixels on a side
are upsampled bilinearly (``align_corners=False``) to 32 on that side, because the backbones'
pooling stages would otherwise shrink the feature maps to nothing (e.g. 28x28 MNIST is scored
at 32x32).  The module is frozen and always in eval mode (the heads' dropout stays off), but
gradients flow to the inputs, so it serves as the LD3 training loss.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.metrics.inception import default_device, load_state_dict_file

MIN_SIZE = 32

BACKBONES = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "squeeze": ("squeezenet1_1-b8a52dc0.pth", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth"),
}
_ALIASES = {"vgg16": "vgg", "alexnet": "alex", "squeezenet": "squeeze"}


def _net_name(net: str) -> str:
    name = _ALIASES.get(net, net)
    if name not in BACKBONES:
        raise ConfigError(f"unknown LPIPS network {net!r}; use one of {sorted(BACKBONES)}")
    return name


def default_backbone_path(net: str = "vgg") -> Path:
    """Torch hub cache path of the torchvision backbone weights for LPIPS ``net``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[_net_name(net)][0]


def _backbone_path(net: str, backbone_weights) -> Path:
    if backbone_weights is not None:
        return Path(backbone_weights).expanduser()
    return default_backbone_path(net)


def lpips_available(net: str = "vgg", backbone_weights: str | os.PathLike | None = None) -> bool:
    """Whether LPIPS ``net`` can be built offline (its backbone weights file exists)."""
    return _backbone_path(net, backbone_weights).is_file()


def lpips_missing_message(net: str = "vgg", backbone_weights: str | os.PathLike | None = None) -> str | None:
    """One line naming each missing LPIPS file, where it goes and the alternative; ``None`` when all are present."""
    name = _net_name(net)
    path = _backbone_path(name, backbone_weights)
    parts = []
    if not path.is_file():
        parts.append(f"torchvision's {BACKBONES[name][0]} is not at {path} (download {BACKBONES[name][1]} there: the "
                     "torch hub cache, $TORCH_HOME/hub/checkpoints/, or set train.lpips_weights=/path/to/"
                     f"{BACKBONES[name][0]})")
    try:
        heads = _heads_path(name)
    except ImportError:
        heads = None
    if heads is None or not heads.is_file():
        parts.append(f"the lpips package's linear layers ({heads or f'lpips/weights/v0.1/{name}.pth'}) are missing "
                     "(pip install --force-reinstall lpips==0.1.4)")
    if not parts:
        return None
    return (f"the LPIPS-{name} loss needs files that are missing: " + "; ".join(parts)
            + ". Nothing was run. Or train with another loss: train.loss=l2")


def _heads_path(net: str) -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"


def _load_backbone(trunk: nn.Module, state: dict, path: Path, net: str) -> None:
    """Copy torchvision ``features.{i}.*`` tensors into lpips' ``slice{k}.{i}.*`` parameters."""
    url = BACKBONES[net][1]
    mapped = {}
    for key, param in trunk.state_dict().items():
        m = re.fullmatch(r"slice\d+\.(\d+)\.(.+)", key)
        if m is None:  # not expected for lpips' trunks
            raise RuntimeError(f"unexpected lpips trunk key {key}")
        tv_key = f"features.{m.group(1)}.{m.group(2)}"
        if tv_key not in state or state[tv_key].shape != param.shape:
            found = "missing" if tv_key not in state else f"shape {tuple(state[tv_key].shape)}"
            raise ConfigError(f"{path} is not torchvision's {net} ImageNet state dict ({tv_key}: {found}, expected "
                              f"{tuple(param.shape)}); replace it with {url}")
        mapped[key] = state[tv_key]
    trunk.load_state_dict(mapped, strict=True)


class LPIPSDistance(nn.Module):
    """Per-sample LPIPS: ``forward(a, b)`` with float ``[B, C, H, W]`` in ``[-1, 1]`` -> ``[B]``."""

    def __init__(self, model: nn.Module, net: str):
        super().__init__()
        self.net_name = net
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> LPIPSDistance:
        # A metric: dropout in the linear heads must never switch on.
        super().train(False)
        return self

    @staticmethod
    def prepare(x: torch.Tensor) -> torch.Tensor:
        """Repeat 1 channel to 3 and upsample sides below 32 px to 32 (bilinear)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(f"LPIPS needs float images [B,C,H,W] with C in (1, 3) in [-1, 1], got shape "
                              f"{tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        if h < MIN_SIZE or w < MIN_SIZE:
            x = F.interpolate(x, size=(max(h, MIN_SIZE), max(w, MIN_SIZE)), mode="bilinear", align_corners=False)
        return x

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"LPIPS inputs must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        dtype = self.model.scaling_layer.shift.dtype
        a = self.prepare(a.to(dtype))
        b = self.prepare(b.to(dtype))
        return self.model(a, b).reshape(a.shape[0])


def build_lpips(net: str = "vgg", backbone_weights: str | os.PathLike | None = None, device=None) -> LPIPSDistance:
    """LPIPS ``net`` ('vgg' | 'alex' | 'squeeze') with local weights; see the module docstring."""
    import lpips

    name = _net_name(net)
    path = _backbone_path(name, backbone_weights)
    if not path.is_file():
        url = BACKBONES[name][1]
        raise MissingFileError(f"LPIPS-{name} backbone weights not found at {path}; download {url} and save it as "
                               f"{path} (or choose another training loss, e.g. loss=l2)")
    state = load_state_dict_file(path, f"torchvision's {name} ImageNet weights", BACKBONES[name][1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation notes for lpips' `pretrained=` calls
        model = lpips.LPIPS(net=name, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    _load_backbone(model.net, state, path, name)
    heads = load_state_dict_file(_heads_path(name), f"the lpips package's {name} heads", "pip install lpips")
    result = model.load_state_dict(heads, strict=False)
    missing_heads = [k for k in result.missing_keys if k.startswith("lin") and not k.startswith("lins.")]
    if result.unexpected_keys or missing_heads:
        raise ConfigError(f"{_heads_path(name)} does not match lpips' {name} heads; reinstall lpips (pip install "
                          "--force-reinstall lpips==0.1.4)")
    return LPIPSDistance(model, name).to(device if device is not None else default_device())
