"""Building blocks of the EDM U-Nets (DDPM++, NCSN++, ADM), with EDM's parameter names.

Parameter and buffer names match NVlabs/EDM's ``training/networks.py`` so that a state dict
recorded in an EDM pickle loads with ``strict=True``.  Each layer casts its weights to the
dtype of its input (EDM's mixed precision: the preconditioner casts the input to float16
on CUDA when ``use_fp16`` is set, the weights stay float32).  Tensors are ``[B, C, H, W]``.
No in-place ops, so every forward is differentiable with respect to its input.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_SKIP_INIT: contextvars.ContextVar[bool] = contextvars.ContextVar("edm_skip_init", default=False)


@contextlib.contextmanager
def skip_init():
    """Inside this context layers allocate uninitialised weights (they are about to be overwritten)."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int, gain: float = 1.0) -> torch.Tensor:
    """Random initial weights (EDM's init modes) times ``gain``; uninitialised inside :func:`skip_init`."""
    if _SKIP_INIT.get():
        return torch.empty(*shape)
    if mode not in ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"):
        raise ValueError(f"unknown init mode '{mode}'")
    if gain == 0:
        return torch.zeros(*shape)
    if mode == "xavier_uniform":
        bound = math.sqrt(6 / (fan_in + fan_out))
    elif mode == "kaiming_uniform":
        bound = math.sqrt(3 / fan_in)
    else:
        std = math.sqrt(2 / (fan_in + fan_out)) if mode == "xavier_normal" else math.sqrt(1 / fan_in)
        return torch.empty(*shape).normal_(0.0, std).mul_(gain)
    return torch.empty(*shape).uniform_(-bound, bound).mul_(gain)


class Linear(nn.Module):
    """``y = x W^T + b``; ``weight [out, in]``, ``bias [out]`` (or None)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_mode: str = "kaiming_normal",
                 init_weight: float = 1.0, init_bias: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        fans = {"mode": init_mode, "fan_in": in_features, "fan_out": out_features}
        self.weight = nn.Parameter(weight_init([out_features, in_features], gain=init_weight, **fans))
        self.bias = nn.Parameter(weight_init([out_features], gain=init_bias, **fans)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return F.linear(x, self.weight.to(x.dtype), b)


def _resample_kernel(resample_filter: Sequence[float]) -> torch.Tensor:
    """Separable FIR filter ``f`` -> normalised 2-D kernel ``[1, 1, k, k]`` (sums to 1)."""
    f = torch.as_tensor(resample_filter, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """Convolution (``kernel`` may be 0: resampling only) with optional 2x up/down-sampling by a FIR filter.

    ``fused_resample`` applies the resampling and the convolution in the padding-merged
    order used by NCSN++'s residual encoder.  The filter is a persistent buffer
    ``resample_filter`` (None, hence absent from the state dict, without resampling).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False,
                 init_mode: str = "kaiming_normal", init_weight: float = 1.0, init_bias: float = 0.0):
        if up and down:
            raise ValueError("Conv2d cannot both up- and down-sample")
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fans = {"mode": init_mode, "fan_in": in_channels * kernel * kernel, "fan_out": out_channels * kernel * kernel}
        self.weight = (nn.Parameter(weight_init([out_channels, in_channels, kernel, kernel], gain=init_weight, **fans))
                       if kernel else None)
        self.bias = nn.Parameter(weight_init([out_channels], gain=init_bias, **fans)) if kernel and bias else None
        self.register_buffer("resample_filter", _resample_kernel(resample_filter) if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) if self.weight is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        c_in = self.in_channels
        if self.fused_resample and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile([c_in, 1, 1, 1]), groups=c_in, stride=2,
                                   padding=max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused_resample and self.down and w is not None:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = F.conv2d(x, f.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile([c_in, 1, 1, 1]), groups=c_in, stride=2, padding=f_pad)
            if self.down:
                x = F.conv2d(x, f.tile([c_in, 1, 1, 1]), groups=c_in, stride=2, padding=f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with ``min(num_groups, C // min_channels_per_group)`` groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with timestep-embedding modulation, optional resampling and self-attention.

    ``adaptive_scale``: the embedding gives a per-channel scale and shift (ADM) instead of a
    shift (DDPM++).  Attention uses ``num_heads`` heads (or ``out_channels // channels_per_head``);
    the qkv projection's channels are laid out as ``[heads, C / heads, 3]`` as in EDM.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True,
                 init: dict | None = None, init_zero: dict | None = None, init_attn: dict | None = None):
        super().__init__()
        init = dict(init or {})
        init_zero = dict(init_zero) if init_zero is not None else {"init_weight": 0}
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = dropout
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = adaptive_scale

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, kernel=3, up=up, down=down, resample_filter=resample_filter,
                            **init)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1), **init)
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, kernel=3, **init_zero)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel=kernel, up=up, down=down,
                               resample_filter=resample_filter, **init)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, kernel=1,
                              **(init_attn if init_attn is not None else init))
            self.proj = Conv2d(out_channels, out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + params))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            x = (self.proj(self._attention(self.norm2(x))) + x) * self.skip_scale
        return x

    def _attention(self, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        heads = self.num_heads
        qkv = self.qkv(h).reshape(b * heads, c // heads, 3, hh * ww)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [B*heads, HW, C/heads]
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C/heads)) v
        return a.transpose(1, 2).reshape(b, c, hh, ww)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[cos(x f), sin(x f)]`` with ``f_i = max_positions^(-i / (n/2 - endpoint))``."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** freqs
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f), sin(2 pi x f)]``; ``freqs`` is a persistent buffer."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)
