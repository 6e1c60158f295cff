"""Making samples: the images of a schedule as npz shards, resumable, split over ``torchrun`` ranks.

Image i uses seed ``sample.seed_offset + i`` (EDM's ``--seeds``) and is rounded as
``(x * 127.5 + 128).clip(0, 255)`` to uint8 HWC; the shard layout is :mod:`ld3_cli.store.shards`.
Shards are written to the artifact's work-in-progress directory, each atomically, so an
interrupted run resumes at the first missing one.  With ``torchrun --nproc_per_node=K`` the
shards are split into K contiguous blocks, one per rank, and rank 0 publishes after a barrier.
Besides the shards the artifact holds ``grid.png`` (first 64 images) and
``teacher_vs_student.png`` (teacher top, student bottom, same noises).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError, CorruptArtifactError
from ..metrics.images import to_uint8
from ..solvers.sampler import Sampler
from ..store import Artifact, atomic_write_bytes
from ..store.shards import ShardLayout, first_images, write_shard
from ..utils.distributed import init_distributed, rank_and_world, rank_block
from .context import StageContext
from .inference import student_images, teacher_images

log = logging.getLogger("ld3")
KIND = "samples"
# seeds -> stored teacher images [k, C, H, W] for them, or None (then the grid's teacher is run on those seeds)
StoredTeacher = Callable[[list], Optional[torch.Tensor]]


def shard_layout(ctx: StageContext) -> ShardLayout:
    s = ctx.cfg.sample
    return ShardLayout(int(s.n), int(s.shard_size), int(s.seed_offset))


def make_samples(ctx: StageContext, key: str, sampler: Sampler, name: str, command: str,
                 stored_teacher: Optional[StoredTeacher] = None) -> dict:
    """Every shard of schedule ``name`` (one process), as :meth:`Store.write` arguments."""
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    write_shards(ctx, part, sampler, name, range(shard_layout(ctx).count))
    return finished(ctx, part, name, command, stored_teacher)


def make_samples_distributed(ctx: StageContext, fields: dict, key: str, sampler: Sampler, name: str,
                             command: str, stored_teacher: Optional[StoredTeacher] = None) -> Artifact:
    """This rank's block of shards; rank 0 publishes the artifact once every rank is done."""
    rank, world = rank_and_world()
    dist = init_distributed(ctx.device)
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    write_shards(ctx, part, sampler, name, rank_block(shard_layout(ctx).count, rank, world))
    dist.barrier()
    if rank == 0:
        contents = finished(ctx, part, name, command, stored_teacher)
        art = ctx.store.write(ctx.model_key, KIND, fields, command=command, **contents)
        log.info("samples (%d) written to %s", int(ctx.cfg.sample.n), art.path)
    dist.barrier()
    return ctx.store.open(ctx.model_key, KIND, key, producer=command)


def write_shards(ctx: StageContext, part: Path, sampler: Sampler, name: str, shards) -> None:
    """Write the missing shards among ``shards`` of schedule ``name`` (run by ``sampler``) into ``part``."""
    layout = shard_layout(ctx)
    part.mkdir(parents=True, exist_ok=True)
    bs = max(1, int(ctx.cfg.sample.batch_size))
    todo = layout.missing(part, shards)
    total = sum(len(layout.seeds(k)) for k in shards)
    done = total - sum(len(layout.seeds(k)) for k in todo)
    if done:
        log.info("resuming: %d of %d images already sampled in %s", done, total, part)
    bar = ctx.progress(total, f"sample {name} {ctx.solver_name} NFE {ctx.nfe}", "img", initial=done)
    try:
        for k in todo:
            seeds = layout.seeds(k)
            chunks = []
            for i in range(0, len(seeds), bs):
                sub = seeds[i:i + bs]
                imgs = student_images(ctx, sub, sampler)
                if not bool(torch.isfinite(imgs).all()):
                    raise ConfigError(f"the sampler produced NaN/Inf for seeds {sub[0]}..{sub[-1]} (schedule {name}); "
                                      "check the model and schedule")
                chunks.append(to_uint8(imgs))
                bar.update(len(sub))
            write_shard(part, k, np.concatenate(chunks), seeds)
    finally:
        bar.close()


def finished(ctx: StageContext, part: Path, name: str, command: str,
             stored_teacher: Optional[StoredTeacher] = None) -> dict:
    """Check that every shard is in ``part``, add the figures, and return :meth:`Store.write` arguments.

    ``stored_teacher(seeds)`` may supply the teacher images of the grid's first seeds from the store.
    """
    layout = shard_layout(ctx)
    missing = layout.missing(part)
    if missing:
        raise CorruptArtifactError(f"shards {missing[:5]} missing in {part}; rerun `{command}` to finish them")
    if bool(ctx.cfg.sample.grids):
        for fname, data in _grids(ctx, part, layout, stored_teacher).items():
            atomic_write_bytes(part / fname, data)
    hwc = list(ctx.model.image_shape[1:]) + [ctx.model.image_shape[0]]
    return {"info": {"n": layout.n, "shards": layout.count, "schedule": name, "image_shape": hwc}, "from_dir": part}


def _grids(ctx: StageContext, part: Path, layout: ShardLayout, stored_teacher: Optional[StoredTeacher]) -> dict:
    from ..utils.plots import image_grid

    first = first_images(part, 64)
    out = {"grid.png": image_grid(first)}
    k = min(8, len(first))
    seeds = list(layout.seeds(0))[:k]
    try:
        teacher = stored_teacher(seeds) if stored_teacher is not None else None
        teacher = to_uint8(teacher if teacher is not None else teacher_images(ctx, seeds))
        out["teacher_vs_student.png"] = image_grid(np.concatenate([teacher, first[:k]]), cols=k)
    except Exception as e:  # noqa: BLE001 - a figure must never lose the samples
        log.warning("could not draw teacher_vs_student.png: %s", e)
    return out
