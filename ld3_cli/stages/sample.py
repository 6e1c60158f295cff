"""``ld3 sample`` (alias ``sample-student``): images from a learned or baseline schedule, as npz shards.

``schedule`` names the schedule (``ld3`` or a baseline), ``sample.n`` the number of images (image i
with seed ``sample.seed_offset + i``).  How they are made, resumed and split over ``torchrun``
ranks: :mod:`ld3_cli.stages.sample_shards`; the shard layout: :mod:`ld3_cli.store.shards`.
"""
from __future__ import annotations

from ..store import Artifact
from ..utils.distributed import rank_and_world
from .artifacts import samples_artifact
from .context import StageContext


def run(ctx: StageContext) -> Artifact:
    """Stage entry point."""
    art = samples_artifact(ctx)
    if rank_and_world()[0] == 0:
        print(f"samples ({art.manifest['info']['n']}, schedule {ctx.cfg.schedule}): {art.path}")
    return art
