"""A small real pretrained DDPM on MNIST (eps-prediction, discrete VP, 1000 steps), as an ld3 model.

The weights file (``ddpm_mnist_starter.pth``, MIT, Yichi Zhang 2024; see the model config) is a
flat state dict.  Network ``eps = net(z, tau)`` with ``z [B,1,28,28]`` and ``tau = i / 1000``:
four blocks ``Conv7x7 -> LayerNorm((C,28,28)) -> GELU`` (channels 1->16->32->32->16), a time
embedding (sin / cos-1 features over 16 frequencies -> MLP 32->128->128->128->16, GELUs)
added after block 0, and a final ``Conv3x3`` 16->1.

Diffusion convention of the checkpoint: data ``pixel/255 - 0.5`` in ``[-0.5, 0.5]``,
``z_i = sqrt(abar_i) x0 + sqrt(1 - abar_i) eps`` for integer ``i in 1..1000`` (``abar`` =
``alpha_t`` in the file).  In sigma-space: ``VPDiscrete`` on those ``abar`` with
``first_step = 1``; non-integer steps interpolate log-sigma.  ``decode`` maps ``[-0.5, 0.5]``
to ``[-1, 1]``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, MissingFileError, UnsafeCheckpointError
from ..schedules.noise import VPDiscrete
from .adapters import NetworkDenoiser
from .base import Denoiser

CHANNELS = (1, 16, 32, 32, 16)
FILE_NAME = "ddpm_mnist_starter.pth"
SOURCE = "https://github.com/Yichizz/hot_vs_cold_diffusion (file model/ddpm_mnist_starter.pth, commit b16db75)"


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c_in, c_out, 7, padding=3), nn.LayerNorm((c_out, 28, 28)), nn.GELU())

    def forward(self, h):
        return self.net(h)


class _EpsNet(nn.Module):
    """The checkpoint's eps-predictor; parameter names match the file under the ``gt.`` prefix."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_Block(a, b) for a, b in zip(CHANNELS[:-1], CHANNELS[1:])]
                                    + [nn.Conv2d(CHANNELS[-1], 1, 3, padding=1)])
        self.time_embed = nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
                                        nn.Linear(128, 128), nn.GELU(), nn.Linear(128, CHANNELS[1]))
        self.register_buffer("frequencies", torch.zeros(16))

    def forward(self, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        ph = tau.to(z.dtype)[:, None] * self.frequencies
        emb = self.time_embed(torch.cat([torch.sin(ph), torch.cos(ph) - 1], dim=1))
        h = self.blocks[0](z) + emb[:, :, None, None]
        for blk in self.blocks[1:4]:
            h = blk(h)
        return self.blocks[4](h)


class _Checkpoint(nn.Module):
    """Holds the file's layout (``beta_t``, ``alpha_t`` buffers and ``gt.*``) for a strict load."""

    def __init__(self):
        super().__init__()
        self.gt = _EpsNet()
        self.register_buffer("beta_t", torch.zeros(1001))
        self.register_buffer("alpha_t", torch.zeros(1001))


class MnistDDPM(Denoiser):
    """The MNIST DDPM as a sigma-space denoiser (see module docstring)."""

    name = "mnist_ddpm"
    shape = (1, 28, 28)

    def __init__(self, state_dict: dict, source: str = "the checkpoint"):
        super().__init__()
        ckpt = _Checkpoint()
        try:
            ckpt.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"{source} does not have the MNIST DDPM layout ({str(e).splitlines()[0][:120]}); "
                              "check model.path points at ddpm_mnist_starter.pth") from None
        self.schedule = VPDiscrete(ckpt.alpha_t.double(), first_step=1)
        self.inner = NetworkDenoiser(lambda z, tau, cond: ckpt.gt(z, tau), self.schedule, prediction="eps",
                                     time_input="t/T", time_scale=1000.0)
        self.ckpt = ckpt

    def forward(self, x, sigma, cond=None):
        return self.inner(x, sigma, cond)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x

    def eps(self, z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """The raw network: eps prediction at integer/fractional step ``step`` (``[B]``)."""
        return self.ckpt.gt(z, step.to(z.dtype) / 1000.0)


def load_state_dict(path: Path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"MNIST DDPM weights not found at {path}; put {FILE_NAME} there (source: {SOURCE}) "
                               "or set model.path=/path/to/ddpm_mnist_starter.pth")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure of the tensor-only loader means a bad or unsafe file
        raise UnsafeCheckpointError(f"{path} is not a tensor-only checkpoint ({type(e).__name__}); ld3 never "
                                    "executes code from a checkpoint: point model.path at ddpm_mnist_starter.pth "
                                    "(a plain state dict)") from None
    if not isinstance(sd, dict):
        raise ConfigError(f"{path} does not hold a state dict")
    return sd


def build(cfg: dict, ctx) -> MnistDDPM:
    """Builder for ``model.kind=mnist_ddpm`` (option ``path``)."""
    path = cfg.get("path")
    if not path:
        raise ConfigError("model.path is not set; point it at ddpm_mnist_starter.pth")
    return MnistDDPM(load_state_dict(Path(path)), source=str(path))
