"""pytorch-fid's FID Inception v3 (pool3, 2048-d), built from a local weights file.

The network is pytorch-fid's port of the TensorFlow ``inception-2015-12-05`` graph: torchvision's
Inception v3 with 1008 classes, no auxiliary head, and the FID-specific blocks
(``FIDInceptionA/C/E_1/E_2`` imported from :mod:`pytorch_fid.inception`).  pytorch-fid itself
always downloads the weights; here they are read from ``weights_path`` or from the torch hub
cache (``$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth``, where pytorch-fid's
own download lands), and a missing file is a :class:`MissingFileError` naming the URL and the
path.  Nothing is ever downloaded.

Preprocessing is pytorch-fid's: images in ``[0, 1]``, bilinear resize to 299x299
(``align_corners=False``), then ``2x - 1``.  uint8 images ``u`` enter as ``u / 255`` (what
pytorch-fid's ``ToTensor`` gives), float images ``x`` in ``[-1, 1]`` as ``(x + 1) / 2`` clamped.
Feed uint8 (the store's samples) for numbers comparable with published FIDs.  This detector is
close to, but not identical with, NVIDIA's ``inception-2015-12-05.pkl`` used by EDM / LD3: see
docs/metrics.md.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ld3_cli.errors import ConfigError, MissingFileError, UnsafeCheckpointError
from ld3_cli.metrics.images import to_nchw

# pytorch-fid's ``FID_WEIGHTS_URL`` (a test checks they agree); torchvision and pytorch-fid are imported only
# when the network is built, so a process that never computes an FID does not pay ~1.5 s CPU importing them
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FEATURE_DIM = 2048
INPUT_SIZE = 299


def default_inception_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) caches the FID Inception weights: ``$TORCH_HOME/hub/checkpoints/...``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """Return the weights file to use, or raise :class:`MissingFileError` saying where to put it."""
    path = Path(weights_path).expanduser() if weights_path is not None else default_inception_weights_path()
    if not path.is_file():
        raise MissingFileError(f"FID Inception weights not found at {path}; download {FID_WEIGHTS_URL} "
                               f"(~91 MB) and save it as {path}")
    return path


def inception_weights_available(weights_path: str | os.PathLike | None = None) -> bool:
    """Whether the FID Inception weights file exists (at ``weights_path`` or in the torch hub cache)."""
    path = Path(weights_path).expanduser() if weights_path is not None else default_inception_weights_path()
    return path.is_file()


def fid_inception_architecture() -> nn.Module:
    """The FID Inception v3 graph with uninitialised weights (state-dict layout of pytorch-fid's file)."""
    import torchvision
    from pytorch_fid import inception as _pfid

    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = _pfid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = _pfid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = _pfid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = _pfid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = _pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = _pfid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = _pfid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = _pfid.FIDInceptionE_1(1280)
    net.Mixed_7c = _pfid.FIDInceptionE_2(2048)
    return net


def load_state_dict_file(path: Path, what: str, url: str) -> dict:
    """``torch.load(path, weights_only=True)`` of a plain state dict, with user-facing errors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle with code, truncated file, not a torch file
        raise UnsafeCheckpointError(f"{path} cannot be loaded as plain tensors ({type(exc).__name__}: "
                                    f"{str(exc).splitlines()[0][:200]}); replace it with {what} from {url}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} is not a state dict of tensors; replace it with {what} from {url}")
    return state


class FIDInceptionPool3(nn.Module):
    """FID Inception v3 up to the final average pool: ``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, 2048]``.

    The layers and their order are those of ``pytorch_fid.inception.InceptionV3`` blocks 0-3.
    """

    def __init__(self, inception: nn.Module):
        super().__init__()
        i = inception
        self.layers = nn.Sequential(
            i.Conv2d_1a_3x3, i.Conv2d_2a_3x3, i.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Conv2d_3b_1x1, i.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
            i.Mixed_5b, i.Mixed_5c, i.Mixed_5d, i.Mixed_6a, i.Mixed_6b, i.Mixed_6c, i.Mixed_6d, i.Mixed_6e,
            i.Mixed_7a, i.Mixed_7b, i.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        return self.layers(x).flatten(1)


def build_fid_inception(weights_path: str | os.PathLike | None = None) -> FIDInceptionPool3:
    """Build the pool3 network and load the weights file strictly (see :func:`resolve_inception_weights`)."""
    path = resolve_inception_weights(weights_path)
    state = load_state_dict_file(path, "pytorch-fid's FID Inception weights", FID_WEIGHTS_URL)
    net = fid_inception_architecture()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path} does not hold pytorch-fid's FID Inception weights "
                          f"({str(exc).splitlines()[0][:200]}...); replace it with {FID_WEIGHTS_URL}") from exc
    model = FIDInceptionPool3(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InceptionFeatures:
    """Callable FID feature extractor: images -> Inception pool3 features ``[B, 2048]``.

    ``images``: uint8 ``[B, H, W, C]`` / ``[B, H, W]`` or float ``[B, C, H, W]`` in ``[-1, 1]``
    (numpy or torch), ``C`` in (1, 3); 1-channel images are repeated to RGB.  Runs under
    ``torch.no_grad`` in chunks of ``batch_size``; returns float32 features on ``device``.
    """

    dims = FEATURE_DIM

    def __init__(self, weights_path: str | os.PathLike | None = None, device=None, batch_size: int = 200):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        self.batch_size = int(batch_size)
        self.model = build_fid_inception(weights_path).to(self.device)

    @torch.no_grad()
    def __call__(self, images) -> torch.Tensor:
        n = int(images.shape[0])
        out = []
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = to_nchw(chunk, value_range="unit", device=self.device, rgb=True)
            out.append(self.model(x))
        if not out:
            return torch.zeros(0, FEATURE_DIM, device=self.device)
        return torch.cat(out, dim=0)
