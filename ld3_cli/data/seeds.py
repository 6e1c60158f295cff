"""Seeds -> the inputs of a sample: its unit noise and its condition.

Sample i of a run uses seed ``s_i`` (EDM's per-image seeds): its noise is ``randn(shape)`` drawn
from a generator seeded with ``s_i`` alone, so row i depends only on seed i and any subset
regenerates exactly; its condition is the model's ``draw_conditions(seeds)`` (class labels,
prompt indices, or None for an unconditional model).

Any other random draw made from a sample's seed uses a generator seeded with ``seed + shift``, one
shift per purpose, all in :data:`SEED_SHIFTS`, so that no draw repeats the stream of a noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch


@dataclass(frozen=True)
class SeedShifts:
    """What a draw adds to its seed, per purpose.  The values are fixed: changing one changes results."""

    class_label: int = 7_919        # a class-conditional model's label of sample s (models/base.py)
    prompt: int = 104_729           # a prompt bank's random choice for sample s (models/prompts.py)
    exact_samples: int = 12_345     # the exact model samples fd_exact compares with (metrics/pixel_fd.py)
    noise_floor: int = 54_321       # the noise floor's exact samples, a set drawn apart from the reference set


SEED_SHIFTS = SeedShifts()


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
