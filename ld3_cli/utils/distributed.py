"""Several processes (``torchrun --nproc_per_node=K``): rank, world size, process group, work split.

Rank and world size come from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
a plain run is rank 0 of 1.  Work is split into contiguous blocks, one per rank.
"""
from __future__ import annotations

import os
from typing import Optional

import torch


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process (``(0, 1)`` outside torchrun)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_device(device: torch.device) -> torch.device:
    """This process's device: under torchrun with CUDA, GPU ``LOCAL_RANK`` (made the current device).

    Called before anything is built or loaded (as EDM's generate.py initialises first), so every rank's
    model, noise and shards live on its own GPU; a plain run, a CPU run or an explicit ``cuda:N`` keep
    ``device``.
    """
    if rank_and_world()[1] <= 1 or device.type != "cuda" or device.index is not None:
        return device
    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def init_distributed(device: torch.device) -> Optional[object]:
    """``torch.distributed`` with the process group up (NCCL on CUDA, gloo otherwise); None for one process.

    ``device`` is the rank's own (:func:`rank_device`).
    """
    _, world = rank_and_world()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist


def rank_block(n_items: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n_items)`` that ``rank`` of ``world`` works on (sizes differ by at most 1)."""
    per, extra = divmod(n_items, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))
