"""Speed options for a denoiser, behind the unchanged :class:`~ld3_cli.models.base.Denoiser` interface.

:func:`optimize_denoiser` returns a :class:`SpeedWrapper` around a denoiser ``D(x, sigma[B], cond) -> x0``
that can

* ``channels_last``: store the network's 4-D weights in channels-last (NHWC) memory order and feed
  it channels-last inputs (faster convolutions with cuDNN / oneDNN on recent hardware).  The values
  are unchanged; only the memory layout differs.  The conversion of the weights happens **in
  place** on the wrapped module (it is shared, not copied);
* ``compile``: call a ``torch.compile``-d version of the wrapped module (``compile_mode`` is passed
  as ``mode``: ``None``/``"default"``, ``"reduce-overhead"``, ``"max-autotune"``).  The first calls
  of each new input shape are slow (compilation); the solver and trainer call the network with a
  handful of batch sizes (training batch, validation set, sampling batch);
* ``autocast``: run the wrapped call under ``torch.autocast`` with ``"bf16"`` (bfloat16) or
  ``"fp16"`` (float16, CUDA only) -- matmuls / convolutions in half precision, reductions and
  element-wise maths as autocast decides.  Meant for float32 networks (a network that already
  runs in float16 through its own ``use_fp16`` flag gains nothing).

Whatever the options, the output has the shape, dtype (the dtype of ``x``, so float32 for a float32
state) and default contiguous layout of ``x``, so solvers and losses see no difference except the
rounding of the half-precision network.  ``schedule``, ``shape``, ``image_shape``, ``condition``,
``name``, ``decode``, ``draw_conditions`` and ``describe`` are those of the wrapped denoiser, and
any other attribute (e.g. the mixture's ``sample_exact``) is looked up on the wrapped denoiser.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigError
from .base import Denoiser

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                   "float16": torch.float16}
AUTOCAST_CHOICES = ("bf16", "fp16")  # the values of the config's speed.autocast besides null


def _autocast_dtype(autocast: Any) -> Optional[torch.dtype]:
    if autocast in (None, False, "none", "off", "fp32", "float32"):
        return None
    if autocast is True:
        return torch.bfloat16
    if isinstance(autocast, torch.dtype) and autocast in (torch.bfloat16, torch.float16):
        return autocast
    key = str(autocast).lower()
    if key not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast must be one of none, bf16, fp16; got '{autocast}'")
    return AUTOCAST_DTYPES[key]


class SpeedWrapper(Denoiser):
    """A :class:`Denoiser` that forwards to ``inner`` with speed options (see the module docstring).

    Args:
        inner: the denoiser to wrap (an ``nn.Module`` with ``schedule`` and ``shape``).
        channels_last: convert ``inner``'s 4-D weights (in place) and the input to channels-last.
        compile: call ``torch.compile(inner, mode=compile_mode)`` instead of ``inner``.
        autocast: ``None`` (off), ``"bf16"`` or ``"fp16"``: the network call runs under ``torch.autocast``.
        compile_mode: ``torch.compile``'s ``mode``.
    """

    def __init__(self, inner: torch.nn.Module, channels_last: bool = False, compile: bool = False,
                 autocast: Any = None, compile_mode: Optional[str] = None):
        super().__init__()
        for attr in ("schedule", "shape"):
            if not hasattr(inner, attr):
                raise ConfigError(f"SpeedWrapper needs a Denoiser with a '{attr}' attribute; "
                                  f"got {type(inner).__name__}")
        self.inner = inner
        self.schedule = inner.schedule
        self.shape = tuple(inner.shape)
        self.condition = getattr(inner, "condition", self.condition)
        self.name = getattr(inner, "name", type(inner).__name__)
        self.channels_last = bool(channels_last)
        self.autocast_dtype = _autocast_dtype(autocast)
        self.compiled = bool(compile)
        self.compile_mode = compile_mode
        if self.autocast_dtype == torch.float16 and not torch.cuda.is_available():
            raise ConfigError("autocast=fp16 needs a CUDA device; use autocast=bf16 on CPU")
        if self.channels_last:
            inner.to(memory_format=torch.channels_last)
        # kept out of the module tree: the compiled module shares inner's parameters
        fn = inner
        if self.compiled:
            fn = torch.compile(inner, mode=None if compile_mode in (None, "default") else compile_mode)
        self.__dict__["_call"] = fn

    # -- the Denoiser interface, forwarded ---------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(getattr(self.inner, "image_shape", self.shape))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.decode(x) if hasattr(self.inner, "decode") else x

    def draw_conditions(self, seeds: torch.Tensor):
        if hasattr(self.inner, "draw_conditions"):
            return self.inner.draw_conditions(seeds)
        return None

    def options(self) -> dict:
        """The speed options as plain data."""
        return {"channels_last": self.channels_last, "compile": self.compiled, "compile_mode": self.compile_mode,
                "autocast": None if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")}

    def describe(self) -> dict:
        base = self.inner.describe() if hasattr(self.inner, "describe") else super().describe()
        return {**base, "speed": self.options()}

    def __getattr__(self, name: str):
        """Attributes the wrapper does not have come from the wrapped denoiser (``sample_exact`` ...)."""
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (``inner``)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self.inner, name)

    # -- the call ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[Any] = None) -> torch.Tensor:
        """``D(x, sigma, cond)`` of the wrapped denoiser; output in ``x``'s dtype and default layout."""
        out_dtype = x.dtype
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                out = self._call(x, sigma, cond)
        else:
            out = self._call(x, sigma, cond)
        return out.to(out_dtype).contiguous()


def optimize_denoiser(model: torch.nn.Module, channels_last: bool = False, compile: bool = False,
                      autocast: Any = None, compile_mode: Optional[str] = None) -> torch.nn.Module:
    """Wrap ``model`` with the requested speed options; returns ``model`` itself when none is set.

    See :class:`SpeedWrapper`.  ``autocast``: ``None`` | ``"bf16"`` | ``"fp16"``.
    """
    if not channels_last and not compile and _autocast_dtype(autocast) is None:
        return model
    return SpeedWrapper(model, channels_last=channels_last, compile=compile, autocast=autocast,
                        compile_mode=compile_mode)


__all__ = ["SpeedWrapper", "optimize_denoiser"]
