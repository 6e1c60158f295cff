"""``ld3 sample`` (alias ``sample-student``): images from a learned or baseline schedule, as npz shards.

Image i uses seed ``sample.seed_offset + i`` (EDM's ``--seeds``) and is rounded as
``(x * 127.5 + 128).clip(0, 255)`` to uint8 HWC.  Shard k holds images
``[k * shard_size, min((k + 1) * shard_size, n))`` exactly (no padding rows) with their seeds;
each shard is written atomically, so an interrupted run resumes at the first missing one.
With ``torchrun --nproc_per_node=K -m ld3_cli sample ...`` the shards are split into K
contiguous ranges, one per rank, and rank 0 publishes the artifact after a barrier.

Artifact files: ``shard_00000.npz`` ..., ``grid.png`` (first 64 images) and
``teacher_vs_student.png`` (teacher top, student bottom, same noises).
"""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import ConfigError, CorruptArtifactError
from ..schedules import discretize
from ..search import NEEDS_MODEL, SEARCHED
from ..solvers import solve
from ..store import Artifact, atomic_write_bytes, make_key, to_plain
from .context import StageContext
from .keys import samples_fields

log = logging.getLogger("ld3")
KIND = "samples"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> ``[B, H, W, C]`` uint8, EDM's rounding."""
    x = (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


# -- schedules ---------------------------------------------------------------------------------
def baseline_options(ctx: StageContext, name: str) -> dict:
    opts: dict = {}
    if name == "ays":
        fam = ctx.model_cfg.get("ays_family")
        if fam:
            opts["model_family"] = fam
    return opts


def schedule_for(ctx: StageContext, name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(sigmas, sigmas_eval, description)`` for ``ld3`` or a baseline; the description enters sample keys."""
    if name == "ld3":
        from .train import learned_schedule, load_schedule

        art = learned_schedule(ctx)  # a missing schedule fails before the model is built
        sig, ev = load_schedule(art, ctx.model.schedule)
        return sig, ev, {"kind": "ld3", "key": art.key}
    model = ctx.model
    opts = baseline_options(ctx, name)
    if name in SEARCHED:
        sig = _cached_baseline(ctx, name, opts)
    else:
        sig = discretize(name, ctx.n_steps, model.schedule, **opts)
    return sig, sig, {"kind": name, "sigmas": [float(f"{v:.12g}") for v in sig.tolist()]}


def _cached_baseline(ctx: StageContext, name: str, opts: dict) -> torch.Tensor:
    fields = {"kind": name, "steps": ctx.n_steps, "options": to_plain(opts), "version": 1}
    if name in NEEDS_MODEL:
        fields["seed"] = int(ctx.cfg.seed)
    key = make_key(fields)
    store = ctx.store
    command = ctx.command("sample", [f"schedule={name}"])
    if not store.exists(ctx.model_key, "baselines", key):
        with store.lock(ctx.model_key, "baselines", key):
            if not store.exists(ctx.model_key, "baselines", key):
                t0 = time.perf_counter()
                extra = {"denoiser": ctx.model, "seed": int(ctx.cfg.seed)} if name in NEEDS_MODEL else {}
                log.info("computing the %s baseline for %d steps (cached afterwards)", name, ctx.n_steps)
                sig = discretize(name, ctx.n_steps, ctx.model.schedule, **opts, **extra)
                store.write(ctx.model_key, "baselines", fields, tensors={"sigmas": sig},
                            info={"seconds": time.perf_counter() - t0}, command=command)
    art = store.open(ctx.model_key, "baselines", key, producer=command)
    return art.tensors({"sigmas": (ctx.n_steps + 1,)})["sigmas"].to(torch.float64)


# -- distributed -----------------------------------------------------------------------------
def dist_info() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_dist(ctx: StageContext) -> Optional[object]:
    rank, world = dist_info()
    if world <= 1:
        return None
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        if ctx.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            ctx.device = torch.device("cuda", local)
        dist.init_process_group(backend=backend)
    return dist


def rank_shards(n_shards: int, rank: int, world: int) -> range:
    """Contiguous block of shard indices for ``rank``."""
    per, extra = divmod(n_shards, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (1 if rank < extra else 0))


# -- producing ---------------------------------------------------------------------------------
def samples_key(ctx: StageContext, name: str) -> tuple[str, dict, torch.Tensor, torch.Tensor]:
    sig, ev, desc = schedule_for(ctx, name)
    fields = samples_fields(ctx.cfg, desc)
    return make_key(fields), fields, sig, ev


def samples_artifact(ctx: StageContext, name: Optional[str] = None) -> Artifact:
    """The samples for schedule ``name`` (default ``cfg.schedule``), produced when missing."""
    name = name or str(ctx.cfg.schedule)
    key, fields, sig, ev = samples_key(ctx, name)
    store = ctx.store
    rank, world = dist_info()
    cmd = ctx.command("sample", [f"schedule={name}"])
    if store.exists(ctx.model_key, KIND, key):
        return store.open(ctx.model_key, KIND, key, producer=cmd)
    dist = _init_dist(ctx)
    if dist is None:
        with store.lock(ctx.model_key, KIND, key):
            if store.exists(ctx.model_key, KIND, key):
                return store.open(ctx.model_key, KIND, key, producer=cmd)
            _write_shards(ctx, key, sig, ev, name, range(_n_shards(ctx)))
            return _publish(ctx, key, fields, name, cmd)
    _write_shards(ctx, key, sig, ev, name, rank_shards(_n_shards(ctx), rank, world))
    dist.barrier()
    if rank == 0:
        _publish(ctx, key, fields, name, cmd)
    dist.barrier()
    return store.open(ctx.model_key, KIND, key, producer=cmd)


def _n_shards(ctx: StageContext) -> int:
    n, s = int(ctx.cfg.sample.n), int(ctx.cfg.sample.shard_size)
    return (n + s - 1) // s


def _shard_seeds(ctx: StageContext, k: int) -> range:
    n, s, off = int(ctx.cfg.sample.n), int(ctx.cfg.sample.shard_size), int(ctx.cfg.sample.seed_offset)
    return range(off + k * s, off + min((k + 1) * s, n))


def student_images(ctx: StageContext, seeds, sig: torch.Tensor, ev: torch.Tensor) -> torch.Tensor:
    """Decoded student images ``[B, C, H, W]`` in [-1, 1] for these seeds (no grad)."""
    model = ctx.model
    noises = ctx.noises(seeds)
    cond = model.draw_conditions(torch.tensor(list(seeds)))
    if isinstance(cond, torch.Tensor):
        cond = cond.to(ctx.device)
    with torch.no_grad():
        out = solve(ctx.solver_name, model, noises * float(sig[0]), sig, ev, cond, **ctx.solver_options)
        return model.decode(out)


def _write_shards(ctx: StageContext, key: str, sig, ev, name: str, shards) -> None:
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    part.mkdir(parents=True, exist_ok=True)
    bs = max(1, int(ctx.cfg.sample.batch_size))
    todo = [k for k in shards if not (part / f"shard_{k:05d}.npz").is_file()]
    total = sum(len(_shard_seeds(ctx, k)) for k in shards)
    done = total - sum(len(_shard_seeds(ctx, k)) for k in todo)
    if done:
        log.info("resuming: %d of %d images already sampled in %s", done, total, part)
    bar = ctx.progress(total, f"sample {name} {ctx.solver_name} NFE {ctx.nfe}", "img", initial=done)
    try:
        for k in todo:
            seeds = _shard_seeds(ctx, k)
            chunks = []
            for i in range(0, len(seeds), bs):
                sub = seeds[i:i + bs]
                imgs = student_images(ctx, sub, sig, ev)
                if not bool(torch.isfinite(imgs).all()):
                    raise ConfigError(f"the sampler produced NaN/Inf for seeds {sub[0]}..{sub[-1]} (schedule {name}); "
                                      "check the model and schedule")
                chunks.append(to_uint8(imgs))
                bar.update(len(sub))
            buf = io.BytesIO()
            np.savez(buf, images=np.concatenate(chunks), seeds=np.asarray(list(seeds), dtype=np.int64))
            atomic_write_bytes(part / f"shard_{k:05d}.npz", buf.getvalue())
    finally:
        bar.close()


def _publish(ctx: StageContext, key: str, fields: dict, name: str, command: str) -> Artifact:
    part = ctx.store.partial_path(ctx.model_key, KIND, key)
    n_shards = _n_shards(ctx)
    missing = [k for k in range(n_shards) if not (part / f"shard_{k:05d}.npz").is_file()]
    if missing:
        raise CorruptArtifactError(f"shards {missing[:5]} missing in {part}; rerun `{command}` to finish them")
    files = {}
    if bool(ctx.cfg.sample.grids):
        files.update(_grids(ctx, part, name))
    for fname, data in files.items():
        atomic_write_bytes(part / fname, data)
    hwc = list(ctx.model.image_shape[1:]) + [ctx.model.image_shape[0]]
    info = {"n": int(ctx.cfg.sample.n), "shards": n_shards, "schedule": name, "image_shape": hwc}
    art = ctx.store.write(ctx.model_key, KIND, fields, info=info, command=command, from_dir=part)
    log.info("samples (%d) written to %s", int(ctx.cfg.sample.n), art.path)
    return art


def _grids(ctx: StageContext, part, name: str) -> dict:
    from ..utils.plots import image_grid

    with np.load(part / "shard_00000.npz", allow_pickle=False) as z:
        first = z["images"][:64]
    out = {"grid.png": image_grid(first)}
    k = min(8, len(first))
    try:
        from .teacher_sample import run_teacher

        seeds = list(_shard_seeds(ctx, 0))[:k]
        noises = ctx.noises(seeds)
        cond = ctx.model.draw_conditions(torch.tensor(seeds))
        cond = cond.to(ctx.device) if isinstance(cond, torch.Tensor) else cond
        teacher = to_uint8(ctx.model.decode(run_teacher(ctx, noises, cond)))
        out["teacher_vs_student.png"] = image_grid(np.concatenate([teacher, first[:k]]), cols=k)
    except Exception as e:  # noqa: BLE001 - a figure must never lose the samples
        log.warning("could not draw teacher_vs_student.png: %s", e)
    return out


# -- reading -----------------------------------------------------------------------------------
def iter_images(art: Artifact, batch: int = 1000) -> Iterator[np.ndarray]:
    """uint8 ``[b, H, W, C]`` batches over all shards in seed order.

    Every shard is checked before use: it must hold exactly its seeds' images (count and seeds from
    the artifact's config), as uint8 ``[k, H, W, C]`` of the one image shape (``info.image_shape``
    when recorded); anything else is a :class:`CorruptArtifactError` naming the rebuild command.
    """
    info, cfg = art.manifest["info"], art.config
    n, size, off = int(info["n"]), int(cfg.get("shard_size", info["n"])), int(cfg.get("seed_offset", 0))
    rebuild = f"delete {art.path} and rerun `{art.rebuild}`"
    n_shards = (n + size - 1) // size
    if int(info["shards"]) != n_shards:
        raise CorruptArtifactError(f"{art.path}: its manifest lists {info['shards']} shards, {n} images in shards of "
                                   f"{size} need {n_shards}; {rebuild}")
    hwc = tuple(info["image_shape"]) if info.get("image_shape") else None
    for k in range(n_shards):
        p = art.path / f"shard_{k:05d}.npz"
        try:
            with np.load(p, allow_pickle=False) as z:
                imgs, seeds = z["images"], z["seeds"]
        except Exception as e:  # noqa: BLE001 - zip / format errors of a damaged shard
            raise CorruptArtifactError(f"unreadable shard {p} ({type(e).__name__}: {e}); {rebuild}") from None
        want = np.arange(off + k * size, off + min((k + 1) * size, n))
        hwc = hwc or tuple(imgs.shape[1:])
        if (imgs.dtype != np.uint8 or imgs.ndim != 4 or tuple(imgs.shape[1:]) != hwc or len(imgs) != len(want)
                or not np.array_equal(seeds, want)):
            raise CorruptArtifactError(f"shard {p} holds {imgs.dtype} images {list(imgs.shape)} (seeds "
                                       f"{_span(seeds)}), expected uint8 [{len(want)}, {', '.join(map(str, hwc))}] for "
                                       f"seeds {_span(want)}; {rebuild}")
        for i in range(0, len(imgs), batch):
            yield imgs[i:i + batch]


def _span(seeds) -> str:
    seeds = np.asarray(seeds).reshape(-1)
    return f"{seeds[0]}..{seeds[-1]}" if seeds.size else "none"


def run(ctx: StageContext) -> Artifact:
    """Stage entry point."""
    art = samples_artifact(ctx)
    if dist_info()[0] == 0:
        print(f"samples ({art.manifest['info']['n']}, schedule {ctx.cfg.schedule}): {art.path}")
    return art
