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


def init_distributed(device: torch.device) -> tuple[Optional[object], torch.device]:
    """``(torch.distributed, this rank's device)`` once the process group is up; ``(None, device)`` for one process.

    NCCL on CUDA (each rank on its ``LOCAL_RANK`` GPU), gloo otherwise.
    """
    _, world = rank_and_world()
    if world <= 1:
        return None, device
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist, device


def rank_block(n_items: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n_items)`` that ``rank`` of ``world`` works on (sizes differ by at most 1)."""
    per, extra = divmod(n_items, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))
