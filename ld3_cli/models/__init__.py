"""Models as sigma-space denoisers: the embedded Gaussian mixture, DDPM/EDM/diffusers/flow adapters."""
from .base import ConditionSpec, Denoiser
from .registry import BUILDERS, BuildContext, build_model

__all__ = ["ConditionSpec", "Denoiser", "BuildContext", "build_model", "BUILDERS"]
