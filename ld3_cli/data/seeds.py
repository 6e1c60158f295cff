"""Seeds -> the inputs of a sample: its unit noise and its condition.

Sample i of a run uses seed ``s_i`` (EDM's per-image seeds): its noise is ``randn(shape)`` drawn
from a generator seeded with ``s_i`` alone, so row i depends only on seed i and any subset
regenerates exactly; its condition is the model's ``draw_conditions(seeds)`` (class labels,
prompt indices, or None for an unconditional model).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch


def noise_for_seeds(seeds: Iterable[int], shape: tuple, device: torch.device = torch.device("cpu"),
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit Gaussian noise ``[n, *shape]``; row i depends only on seed i (any subset regenerates)."""
    rows = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows).to(device=device, dtype=dtype)


def conditions_for_seeds(model, seeds: Iterable[int], device: torch.device) -> Any:
    """``model.draw_conditions`` for these seeds, a tensor moved to ``device`` (None when unconditional)."""
    cond = model.draw_conditions(torch.tensor(list(seeds)))
    return cond.to(device) if isinstance(cond, torch.Tensor) else cond


def seed_inputs(model, seeds: Iterable[int], device: torch.device) -> tuple[torch.Tensor, Any]:
    """``(noise [n, *model.shape] in model.dtype, condition)`` of the samples with these seeds."""
    seeds = list(seeds)
    noise = noise_for_seeds(seeds, tuple(model.shape), device, model.dtype)
    return noise, conditions_for_seeds(model, seeds, device)
