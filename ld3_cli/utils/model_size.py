"""How big a model is, for the choices that depend on it: CPU threads (stages) and gradient checkpointing (trainer)."""
from __future__ import annotations

from torch import nn

# Below this many parameters a model's work per call is small (the embedded mixture has none: two B x 784 x 1280
# matmuls per call): a second CPU intra-op thread costs more in wake-ups than it gains, and the trainer keeps the
# activations for the backward pass rather than recompute them (gradient checkpointing is for larger models)
SMALL_MODEL_PARAMETERS = 1_000_000


def parameter_count(model) -> int:
    """The number of parameters of ``model`` (0 for a denoiser that is not an ``nn.Module``)."""
    return sum(p.numel() for p in model.parameters()) if isinstance(model, nn.Module) else 0
