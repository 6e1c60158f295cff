"""The EDM U-Nets: ``SongUNet`` (DDPM++ / NCSN++, Song et al. 2021) and ``DhariwalUNet`` (ADM, Dhariwal & Nichol 2021).

Both take ``(x [B, C, H, W], noise_labels [B], class_labels [B, label_dim] or None)`` and return
``[B, out_channels, H, W]`` -- the raw network output ``F`` that the preconditioners in
:mod:`.precond` turn into a denoised image.  Constructor arguments are NVlabs/EDM's names and
defaults, so the ``init_kwargs`` recorded in an EDM pickle build the same architecture, and
sub-module names match EDM's, so its state dict loads with ``strict=True``.

The configurations of the public checkpoints (EDM ``train.py`` presets):

* DDPM++ (cifar10 / ffhq / afhqv2 VP): ``embedding_type='positional'``, ``encoder_type='standard'``,
  ``channel_mult_noise=1``, ``resample_filter=[1, 1]``, ``model_channels=128``,
  ``channel_mult=[2, 2, 2]`` (cifar10) or ``[1, 2, 2, 2]`` (64x64), ``augment_dim=9``.
* NCSN++ (VE): ``embedding_type='fourier'``, ``encoder_type='residual'``, ``channel_mult_noise=2``,
  ``resample_filter=[1, 3, 3, 1]``.
* ADM (imagenet-64 cond): ``DhariwalUNet`` with ``model_channels=192``, ``channel_mult=[1, 2, 3, 4]``.

Augmentation labels are accepted but never used by ld3 (EDM samples without them).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ U-Net (EDM's re-implementation of score_sde's networks).

    Args follow EDM: ``img_resolution``, ``in_channels``, ``out_channels``, ``label_dim``,
    ``augment_dim``, ``model_channels``, ``channel_mult``, ``channel_mult_emb``, ``num_blocks``,
    ``attn_resolutions``, ``dropout``, ``label_dropout``, ``embedding_type`` (positional|fourier),
    ``channel_mult_noise``, ``encoder_type`` (standard|skip|residual), ``decoder_type``
    (standard|skip), ``resample_filter``.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2),
                 channel_mult_emb: int = 4, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 dropout: float = 0.10, label_dropout: float = 0.0, embedding_type: str = "positional",
                 channel_mult_noise: int = 1, encoder_type: str = "standard", decoder_type: str = "standard",
                 resample_filter: Sequence[int] = (1, 1)):
        if embedding_type not in ("fourier", "positional"):
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {embedding_type!r}")
        if encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        noise_channels = model_channels * channel_mult_noise
        init = {"init_mode": "xavier_uniform"}
        init_zero = {"init_mode": "xavier_uniform", "init_weight": 1e-5}
        init_attn = {"init_mode": "xavier_uniform", "init_weight": math.sqrt(0.2)}
        block = {"emb_channels": emb_channels, "num_heads": 1, "dropout": dropout, "skip_scale": math.sqrt(0.5),
                 "eps": 1e-6, "resample_filter": resample_filter, "resample_proj": True, "adaptive_scale": False,
                 "init": init, "init_zero": init_zero, "init_attn": init_attn}

        # mapping network: noise (+ label, + augment) -> embedding
        self.map_noise = (PositionalEmbedding(noise_channels, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(noise_channels))
        self.map_label = Linear(label_dim, noise_channels, **init) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False, **init) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)

        # sub-modules are created (and their weights drawn) in EDM's order: encoder first, then decoder
        self.enc = self._build_encoder(img_resolution, in_channels, model_channels, channel_mult, num_blocks,
                                       attn_resolutions, encoder_type, resample_filter, block, init)
        skips = [m.out_channels for name, m in self.enc.items() if "aux" not in name]
        cout = skips[-1] if skips else in_channels  # the encoder's last block feeds the decoder
        self.dec = self._build_decoder(img_resolution, out_channels, model_channels, channel_mult, num_blocks,
                                       attn_resolutions, decoder_type, resample_filter, block, init_zero, cout, skips)

    @staticmethod
    def _build_encoder(img_resolution: int, in_channels: int, model_channels: int, channel_mult: Sequence[int],
                       num_blocks: int, attn_resolutions: Sequence[int], encoder_type: str,
                       resample_filter: Sequence[int], block: dict, init: dict) -> nn.ModuleDict:
        """EDM's ``enc`` dict: per resolution a conv (first level) or down block, the ``aux`` skip/residual
        path of ``encoder_type``, then ``num_blocks`` UNet blocks."""
        enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
                if encoder_type == "skip":
                    enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, kernel=0, down=True,
                                                          resample_filter=resample_filter)
                    enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, kernel=1, **init)
                if encoder_type == "residual":
                    enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, kernel=3, down=True,
                                                              resample_filter=resample_filter,
                                                              fused_resample=True, **init)
                    caux = cout
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
        return enc

    @staticmethod
    def _build_decoder(img_resolution: int, out_channels: int, model_channels: int, channel_mult: Sequence[int],
                       num_blocks: int, attn_resolutions: Sequence[int], decoder_type: str,
                       resample_filter: Sequence[int], block: dict, init_zero: dict, cout: int,
                       skips: list[int]) -> nn.ModuleDict:
        """EDM's ``dec`` dict, from the bottleneck (``cout`` channels) up; consumes ``skips`` (the encoder's
        output channels) from the end.  The ``aux`` output head sits at level 0, or at every level when
        ``decoder_type='skip'``."""
        dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = idx == num_blocks and res in attn_resolutions
                dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, kernel=0, up=True,
                                                        resample_filter=resample_filter)
                dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, kernel=3, **init_zero)
        return dec

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None and class_labels is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        aux = x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)

        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM U-Net (EDM's re-implementation of guided-diffusion's network).

    Args follow EDM: ``img_resolution``, ``in_channels``, ``out_channels``, ``label_dim``,
    ``augment_dim``, ``model_channels``, ``channel_mult``, ``channel_mult_emb``, ``num_blocks``,
    ``attn_resolutions``, ``dropout``, ``label_dropout``.  Attention heads have 64 channels.
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult: Sequence[int] = (1, 2, 3, 4),
                 channel_mult_emb: int = 4, num_blocks: int = 3, attn_resolutions: Sequence[int] = (32, 16, 8),
                 dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        init = {"init_mode": "kaiming_uniform", "init_weight": math.sqrt(1 / 3), "init_bias": math.sqrt(1 / 3)}
        init_zero = {"init_mode": "kaiming_uniform", "init_weight": 0, "init_bias": 0}
        block = {"emb_channels": emb_channels, "channels_per_head": 64, "dropout": dropout, "init": init,
                 "init_zero": init_zero}

        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False, **init_zero) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels, **init)
        self.map_layer1 = Linear(emb_channels, emb_channels, **init)
        self.map_label = (Linear(label_dim, emb_channels, bias=False, init_mode="kaiming_normal",
                                 init_weight=math.sqrt(label_dim)) if label_dim else None)

        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, kernel=3, **init)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
            for idx in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        skips = [m.out_channels for m in self.enc.values()]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions,
                                                                **block)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, kernel=3, **init_zero)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None and class_labels is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


#: EDM ``model_type`` name -> class
NETWORKS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
