"""Calling a diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, DiT and SD3 transformers)."""
from __future__ import annotations

import inspect

import torch


class DiffusersCall:
    """``call(net, x_t, t_in, kwargs) -> prediction`` for diffusers networks.

    Passes ``x_t`` (cast to the network dtype) as ``sample`` / ``hidden_states`` and ``t_in``
    as ``timestep`` with the extra keyword tensors in ``kwargs``; returns the first output
    with its first ``channels`` channels (learned-variance models output ``2 * channels``).
    """

    def __init__(self, net, channels: int, dtype: torch.dtype | None = None):
        params = inspect.signature(net.forward).parameters
        self.x_key = "sample" if "sample" in params else "hidden_states" if "hidden_states" in params else None
        self.return_dict = "return_dict" in params
        self.channels = int(channels)
        self.dtype = dtype

    def __call__(self, net, x_t: torch.Tensor, t_in: torch.Tensor, kwargs: dict | None) -> torch.Tensor:
        x_in = x_t.to(self.dtype) if self.dtype is not None else x_t
        args = dict(kwargs or {})
        args["timestep"] = t_in
        if self.return_dict:
            args["return_dict"] = False
        out = net(x_in, **args) if self.x_key is None else net(**{self.x_key: x_in}, **args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif hasattr(out, "sample"):
            out = out.sample
        if out.shape[1] == 2 * self.channels:
            out = out[:, : self.channels]
        return out
