#!/usr/bin/env python
"""Benchmark ld3's hot paths for one model config on one device; print tables and write JSON.

Sections (each can be skipped):

(a) network   forward and forward+backward throughput (images/s) of the denoiser at the batch
              sizes ld3 uses: the training batch, the validation set (validated in one batch) and
              the sampling batch; forward+backward (gradient to the input, the weights are frozen
              as in LD3) plain and through gradient checkpointing, at the training batch.  Several
              speed variants (plain, channels_last, bf16 autocast, torch.compile) side by side.
(b) train     the paper's CIFAR-10 setting in-process: ``--n`` teacher pairs (default 100, split
              50/50) from a UniPC-3 teacher at ``--teacher-nfe`` (20) on logSNR steps, then
              :class:`ld3_cli.ld3.trainer.LD3Trainer` with UniPC order 3 at ``--nfe`` (10), loss
              ``auto`` (LPIPS-VGG for RGB images, L2 otherwise; LPIPS without its weights stops the
              benchmark naming the files: pass ``--lpips-weights`` or ``--loss l2``; the table says which).
              Reports teacher time, trainer set-up (baseline evaluation), training wall time,
              iterations, time per iteration and peak memory.
(c) sampling  ``ld3_cli.solvers.solve`` end to end at NFE 5 and 10 (images/s) against the same
              network calls on the same batch without the solver, giving the fraction of time
              spent outside the network; also the solver's own arithmetic alone (a trivial
              denoiser) and, on CUDA, the number of host synchronisations per solve.
(d) cli       (``--cli``) the embedded default through the command line, each in a fresh temporary
              store: ``ld3 teacher-sample``, ``ld3 train --nfe 5`` and ``ld3 run``, wall-clock.

Usage::

    python scripts/bench.py                                   # model=edm_cifar10_random, device auto
    python scripts/bench.py model=mnist_gmm --device cpu --cli --json bench.json
    python scripts/bench.py --n 4 --batch 2 --iters 2 --sample-batch 4   # a small CPU run
    python scripts/bench.py model=edm_cifar10_random model.init_kwargs.model_channels=32 ...

``model=<name>`` picks ``configs/model/<name>.yaml``; ``model.KEY=VALUE`` overrides a key of it.
Timings are wall-clock; on CUDA every measurement is bracketed by ``torch.cuda.synchronize``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ld3_cli.data.seeds import conditions_for_seeds, seed_inputs
from ld3_cli.errors import ConfigError, Ld3Error
from ld3_cli.ld3.start import split_sizes
from ld3_cli.ld3.trainer import LD3Trainer, TrainOptions, _Checkpointed
from ld3_cli.models.registry import BuildContext, build_model
from ld3_cli.models.speed import optimize_denoiser
from ld3_cli.schedules import discretize
from ld3_cli.solvers import get_solver, solve
from ld3_cli.store import Store
from ld3_cli.utils.bench import (Stopwatch, count_host_syncs, format_table, peak_memory, reset_peak_memory,
                                 synchronize, system_load, time_fn)
from ld3_cli.utils.devices import resolve_device

PAPER = {"n": 100, "nfe": 10, "teacher_nfe": 20, "solver": "unipc", "order": 3, "iters_phase1": 50,
         "iters_phase2": 125}
VARIANTS = {
    "plain": {},
    "channels_last": {"channels_last": True},
    "bf16": {"autocast": "bf16"},
    "channels_last+bf16": {"channels_last": True, "autocast": "bf16"},
    "compile": {"compile": True},
    "compile+channels_last": {"compile": True, "channels_last": True},
    "compile+bf16": {"compile": True, "autocast": "bf16"},
    "compile+channels_last+bf16": {"compile": True, "channels_last": True, "autocast": "bf16"},
}
CLI_TARGETS_S = {"train_nfe5": 60.0, "run": 180.0}  # (d): wall-clock targets of the embedded default


# ------------------------------------------------------------------------------------------------
# arguments

def _add_workload_args(p: argparse.ArgumentParser) -> None:
    """Model overrides, device, batch sizes and the (b)/(c) workload: NFEs, pairs, iterations, loss."""
    p.add_argument("overrides", nargs="*", help="model=NAME and model.KEY=VALUE")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    p.add_argument("--batch", type=int, default=None,
                   help="training batch (default: the model config's train_batch_size, else 2)")
    p.add_argument("--sample-batch", type=int, default=100, help="sampling batch for (a) and (c)")
    p.add_argument("--net-batches", default=None,
                   help="comma list of batches for (a) (default: training batch, validation set, sampling batch)")
    p.add_argument("--n", type=int, default=PAPER["n"], help="teacher pairs, split 50/50 train/validation")
    p.add_argument("--nfe", type=int, default=PAPER["nfe"], help="student NFE for (b)")
    p.add_argument("--teacher-nfe", type=int, default=PAPER["teacher_nfe"], help="teacher NFE for (b)")
    p.add_argument("--teacher-batch", type=int, default=100, help="teacher solve batch")
    p.add_argument("--iters", type=int, default=None,
                   help="total training iterations, split 2:5 over phases 1 and 2 (default: the paper's 50 + 125)")
    p.add_argument("--init", default="auto", help="initial schedule: auto (best of 4 baselines) or a baseline name")
    p.add_argument("--loss", default="auto", help="auto (LPIPS for RGB, which needs its weights; else l2), l2, lpips")
    p.add_argument("--lpips-weights", default=None, help="local vgg16-397923af.pth for the LPIPS loss")
    p.add_argument("--grad-checkpoint", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--sampling-nfe", default="5,10", help="comma list of NFE for (c)")


def _add_timing_args(p: argparse.ArgumentParser) -> None:
    """How each measurement is repeated, and which sections are skipped."""
    p.add_argument("--reps", type=int, default=3, help="least timed repetitions per measurement (best reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="repeat each measurement until this many seconds were timed (best run reported)")
    p.add_argument("--skip-network", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-sampling", action="store_true")


def _add_cli_args(p: argparse.ArgumentParser) -> None:
    """Section (d): the embedded default through the command line."""
    p.add_argument("--cli", action="store_true",
                   help="also time `ld3 teacher-sample`, `ld3 train --nfe 5` and `ld3 run` on the embedded default "
                        "(model=mnist_gmm, device=cpu) in fresh temporary stores")
    p.add_argument("--cli-timeout", type=float, default=1800.0)
    p.add_argument("--cli-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the (d) commands, e.g. LD3_THREADS=1 or OMP_WAIT_POLICY=PASSIVE (repeatable)")


def _add_speed_args(p: argparse.ArgumentParser) -> None:
    """Speed variants of (a) and the network speed-ups used in (b) and (c)."""
    p.add_argument("--variants", default=None,
                   help=f"comma list of speed variants for (a), from {sorted(VARIANTS)} "
                        "(default: plain,channels_last, plus bf16 on CUDA)")
    p.add_argument("--channels-last", action="store_true", help="(b), (c): channels_last network")
    p.add_argument("--compile", action="store_true", help="(b), (c): torch.compile the denoiser")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default, reduce-overhead, max-autotune)")
    p.add_argument("--autocast", default=None, choices=[None, "bf16", "fp16"],
                   help="(b), (c): run the network under autocast (off by default)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="turn TF32 matmuls/convolutions off on CUDA (on by default, as in ld3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _add_misc_args(p: argparse.ArgumentParser) -> None:
    """Cache directory, seed and the JSON output."""
    p.add_argument("--cache-dir", default=os.environ.get("LD3_CACHE", "ld3-cache"),
                   help="store root for models that cache derived data (the mixture fit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")


def _build_parser() -> argparse.ArgumentParser:
    """The command-line parser (arguments in ``--help`` order)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="model=<name> picks configs/model/<name>.yaml; model.KEY=VALUE overrides "
                                       "its keys")
    _add_workload_args(p)
    _add_timing_args(p)
    _add_cli_args(p)
    _add_speed_args(p)
    _add_misc_args(p)
    return p


def _split_overrides(p: argparse.ArgumentParser, overrides: list[str]) -> tuple[str, list[str]]:
    """``model=NAME`` and ``model.KEY=VALUE`` positionals -> (model name, ``KEY=VALUE`` overrides)."""
    model_name, model_over = "edm_cifar10_random", []
    for o in overrides:
        if o.startswith("model="):
            model_name = o.split("=", 1)[1]
        elif o.startswith("model.") and "=" in o:
            model_over.append(o[len("model."):])
        else:
            p.error(f"unexpected argument '{o}': use model=NAME or model.KEY=VALUE")
    return model_name, model_over


def _check_counts(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject counts below their minimum (through ``p.error``)."""
    for name in ("n", "nfe", "teacher_nfe", "teacher_batch", "sample_batch", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.n < 2:
        p.error("--n must be at least 2 (one training and one validation pair)")


def parse_args(argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, str, list[str]]:
    p = _build_parser()
    args = p.parse_args(argv)
    model_name, model_over = _split_overrides(p, args.overrides)
    _check_counts(p, args)
    return args, model_name, model_over

def cli_env(items: list[str]) -> dict:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--cli-env expects KEY=VALUE, got '{item}'")
        env[key] = value
    return env


def int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected a comma list of whole numbers, got '{text}'") from None
    if not vals or min(vals) < 1:
        raise ConfigError(f"expected positive whole numbers, got '{text}'")
    return vals


# ------------------------------------------------------------------------------------------------
# set-up

def configure(args, device: torch.device) -> dict:
    if args.threads:
        torch.set_num_threads(int(args.threads))
    info = {"tf32": None}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.benchmark = True
        info["tf32"] = bool(args.tf32)
        info["cudnn_benchmark"] = True
    return info


def model_config(name: str, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    from ld3_cli.cli.apps import config_dir

    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
        raise ConfigError(f"no model config '{name}' ({path}); choose one of {names}")
    cfg = OmegaConf.load(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    cfg.pop("defaults", None)
    return OmegaConf.to_container(cfg, resolve=True)


def build(cfg: dict, device: torch.device, cache_dir: str):
    return build_model(cfg, BuildContext(device=device, cache=Store(cache_dir).fit_cache(), dataset={"name": "mnist5k"},
                                         allow_download=False))


def restore_layout(base) -> None:
    """Undo an in-place channels_last conversion of the shared base model."""
    base.to(memory_format=torch.contiguous_format)


def n_validation(n: int) -> int:
    """How many of ``n`` teacher pairs the trainer holds out for validation (its default ``val_fraction``)."""
    return split_sizes(n, TrainOptions().val_fraction)[1]


def sigmas_for(model, kind: str, nfe: int) -> torch.Tensor:
    return discretize(kind, get_solver("unipc").steps_for_nfe(nfe), model.schedule)


# ------------------------------------------------------------------------------------------------
# (a) network throughput

def _forward(model, x, sigmas, cond) -> None:
    """One network call per noise level in ``sigmas`` on the same input, without gradients."""
    with torch.no_grad():
        for s in sigmas:
            model(x, s, cond)


def _forward_backward(model, x, sig, cond) -> None:
    """One forward and backward to the input ``x`` (the weights are frozen, as in LD3 training)."""
    xg = x.detach().requires_grad_(True)
    model(xg, sig, cond).float().square().mean().backward()


def network_row(model, device, x, sig, cond, with_backward: bool, tk: dict) -> dict:
    """Throughput of one model at one batch: forward, and forward+backward (plain and checkpointed
    as the trainer checkpoints)."""
    b = x.shape[0]
    row: dict[str, Any] = {"batch": b}
    with Stopwatch(device) as sw:
        _forward(model, x, [sig], cond)
    row["first_call_s"] = sw.seconds
    t = time_fn(lambda: _forward(model, x, [sig], cond), device, **tk)
    row.update(forward_s=t.best, forward_median_s=t.median, forward_img_s=b / t.best)
    if with_backward:
        window = reset_peak_memory(device) if device.type == "cuda" else False
        t = time_fn(lambda: _forward_backward(model, x, sig, cond), device, **tk)
        row.update(fwd_bwd_s=t.best, fwd_bwd_median_s=t.median, fwd_bwd_img_s=b / t.best)
        if device.type == "cuda":
            row["fwd_bwd_peak_mb"] = peak_memory(device, window)["bytes"] / 2**20
        ckpt = _Checkpointed(model)
        t = time_fn(lambda: _forward_backward(ckpt, x, sig, cond), device, **tk)
        row.update(fwd_bwd_ckpt_s=t.best, fwd_bwd_ckpt_median_s=t.median, fwd_bwd_ckpt_img_s=b / t.best)
    return row


def bench_network(base, device, batches: dict, train_batch: int, variants: list[str], tk: dict) -> list:
    """(a): one row per (variant, batch); ``tk``: :func:`time_fn` options (reps, warmup, min_time).

    Inputs: unit noise at ``sigma = 1`` (the cost does not depend on the values), the same for every
    variant.  Forward+backward is measured at the training batch only (the only batch LD3
    back-propagates through).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant '{unknown[0]}'; choose from {sorted(VARIANTS)}")
    inputs = {label: (torch.randn(b, *base.shape, generator=torch.Generator().manual_seed(1)).to(device, base.dtype),
                      torch.full((b,), 1.0, device=device, dtype=torch.float32),
                      conditions_for_seeds(base, range(b), device))
              for label, b in batches.items()}
    rows = []
    for variant in variants:
        opts = VARIANTS[variant]
        if opts.get("autocast") and device.type == "cpu":
            print(f"note: variant {variant} on CPU: bf16 autocast is usually far slower than float32 on CPUs "
                  "without native bf16 matmuls", file=sys.stderr)
        model = optimize_denoiser(base, **opts)
        try:
            for label, (x, sig, cond) in inputs.items():
                b = x.shape[0]
                row = {"variant": variant, "batch_of": label,
                       **network_row(model, device, x, sig, cond, b == train_batch, tk)}
                rows.append(row)
                print(f"  (a) {variant:<22} batch {b:>4} ({label}): forward {row['forward_img_s']:.4g} img/s"
                      + (f", fwd+bwd {row['fwd_bwd_img_s']:.4g} img/s" if "fwd_bwd_img_s" in row else ""),
                      file=sys.stderr, flush=True)
        finally:
            restore_layout(base)
    return rows


# ------------------------------------------------------------------------------------------------
# (b) training

def _instrument(obj, device, names) -> dict:
    """Shadow ``obj``'s methods ``names`` with device-synchronised timers; returns the running totals (s)."""
    spent = {n: 0.0 for n in names}
    for name in names:
        method = getattr(obj, name)

        def timed(*a, _m=method, _n=name, **k):
            synchronize(device)
            t0 = time.perf_counter()
            try:
                return _m(*a, **k)
            finally:
                synchronize(device)
                spent[_n] += time.perf_counter() - t0

        setattr(obj, name, timed)
    return spent


def bench_train(model, cfg: dict, device, args, train_batch: int) -> dict:
    n_val = n_validation(args.n)
    res: dict[str, Any] = {"n": args.n, "n_train": args.n - n_val, "n_val": n_val,
                           "solver": "unipc", "order": 3, "nfe": args.nfe, "teacher_nfe": args.teacher_nfe,
                           "teacher_discretization": cfg.get("teacher_discretization", "logsnr"),
                           "batch": train_batch, "val_batch": "whole validation set"}
    noises, cond = seed_inputs(model, range(args.seed, args.seed + args.n), device)
    t_sig = sigmas_for(model, res["teacher_discretization"], args.teacher_nfe)
    images = []
    with Stopwatch(device) as sw, torch.no_grad():
        for i in range(0, args.n, args.teacher_batch):
            c = cond[i:i + args.teacher_batch] if cond is not None else None
            out = solve("unipc", model, noises[i:i + args.teacher_batch] * float(t_sig[0]), t_sig, cond=c, order=3)
            images.append(model.decode(out))
    images = torch.cat(images)
    res["teacher_s"] = sw.seconds
    res["teacher_img_s"] = args.n / sw.seconds
    if args.iters is None:
        p1, p2 = PAPER["iters_phase1"], PAPER["iters_phase2"]
    else:
        p1 = max(1, int(round(args.iters * PAPER["iters_phase1"] / (PAPER["iters_phase1"] + PAPER["iters_phase2"]))))
        p2 = max(0, args.iters - p1)
    ckpt = {"auto": "auto", "true": True, "false": False}[args.grad_checkpoint]
    opts = TrainOptions(param=str(cfg.get("param", "lambda")), init=args.init, loss=args.loss,
                        lpips_weights=args.lpips_weights, batch_size=train_batch, iters_phase1=p1, iters_phase2=p2,
                        grad_checkpoint=ckpt, seed=args.seed)
    window = reset_peak_memory(device)
    with Stopwatch(device) as setup:
        trainer = LD3Trainer(model, "unipc", {"order": 3}, args.nfe, noises, images, cond, opts)
    spent = _instrument(trainer, device, ("_step", "_validate"))
    with Stopwatch(device) as run:
        learned = trainer.run()
    mem = peak_memory(device, window)
    iters = int(learned.iterations)
    res.update({
        "loss": learned.loss, "grad_checkpoint": trainer.grad_checkpoint, "init": learned.init,
        "iters_budget": [p1, p2], "iterations": iters,
        "validations": sum(1 for h in learned.history if "val" in h),
        "setup_s": setup.seconds, "train_s": run.seconds, "wall_s": setup.seconds + run.seconds,
        "s_per_iter": run.seconds / max(iters, 1),
        "step_s": spent["_step"], "validation_s": spent["_validate"],
        "validation_fraction": spent["_validate"] / max(run.seconds, 1e-12),
        "peak_memory_mb": mem["bytes"] / 2**20, "peak_memory_kind": mem["kind"],
        "init_val": learned.init_val, "best_val": learned.best_val,
    })
    return res


# ------------------------------------------------------------------------------------------------
# (c) sampling

class _Recorder:
    """Pass-through denoiser that records the sigma of every call."""

    def __init__(self, inner):
        self.inner, self.sigmas = inner, []

    def __call__(self, x, sigma, cond=None):
        self.sigmas.append(sigma)
        return self.inner(x, sigma, cond)


def _trivial(x, sigma, cond=None):
    """A denoiser that costs one element-wise op: isolates the solver's own arithmetic."""
    return x * 0.5


def _solve(den, x, sig, cond, grad: bool = False):
    with torch.set_grad_enabled(grad):
        return solve("unipc", den, x, sig, cond=cond, order=3, check=False)


def _solve_backward(model, x, sig, cond) -> None:
    """A training-like solve: gradients to the input state and to the grid."""
    xg = x.detach().requires_grad_(True)
    sg = sig.detach().clone().requires_grad_(True)
    _solve(model, xg, sg, cond, grad=True).float().square().mean().backward()


def sampling_row(model, plain, device, x, sig, cond, tk: dict, grad_batch: int = 2) -> dict:
    """(c) for one grid: solve vs the same network calls alone vs the solver's arithmetic alone.

    The host synchronisations of a training-like solve (forward and backward) are counted on the first
    ``grad_batch`` samples: what the trainer back-propagates through (a whole sampling batch need not fit)."""
    rec = _Recorder(model)
    _solve(rec, x, sig, cond)
    ts = time_fn(lambda: _solve(model, x, sig, cond), device, **tk)
    tn = time_fn(lambda: _forward(model, x, rec.sigmas, cond), device, **tk)
    tm = time_fn(lambda: _solve(_trivial, x, sig, cond), device, **tk)
    b = x.shape[0]
    row = {"network_calls": len(rec.sigmas), "batch": b, "solve_s": ts.best, "img_s": b / ts.best, "network_s": tn.best,
           "outside_network_fraction": (ts.best - tn.best) / ts.best,
           "solver_math_s": tm.best, "solver_math_fraction": tm.best / ts.best,
           "solve_median_s": ts.median, "network_median_s": tn.median, "timed_runs": len(ts.times)}
    if device.type == "cuda":
        row["host_syncs_per_solve"] = count_host_syncs(lambda: _solve(model, x, sig, cond), device)
        xb, cb = x[:grad_batch], None if cond is None else cond[:grad_batch]
        row["host_syncs_per_solve_fwd_bwd"] = count_host_syncs(lambda: _solve_backward(model, xb, sig, cb), device)
    if plain is not model and getattr(model, "autocast_dtype", None) is not None:
        ref = plain.decode(_solve(plain, x, sig, cond)).float()
        out = plain.decode(_solve(model, x, sig, cond)).float()
        row["rmse_vs_float32"] = float(((out - ref) ** 2).mean().sqrt())
    return row


def bench_sampling(model, plain, cfg: dict, device, nfes: list[int], batch: int, tk: dict, seed: int,
                   grad_batch: int = 2) -> list:
    """(c): one row per NFE; ``plain``: the model without speed options (reference for autocast);
    ``grad_batch``: the training batch (for the forward+backward synchronisation count)."""
    kind = cfg.get("teacher_discretization", "logsnr")
    noise, cond = seed_inputs(model, range(seed + 10_000, seed + 10_000 + batch), device)
    rows = []
    for nfe in nfes:
        sig = sigmas_for(model, kind, nfe).to(device)
        row = {"nfe": nfe, **sampling_row(model, plain, device, noise * float(sig[0]), sig, cond, tk, grad_batch)}
        rows.append(row)
        print(f"  (c) NFE {nfe}: {row['img_s']:.4g} img/s, outside the network "
              f"{100 * row['outside_network_fraction']:.1f}%", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# (d) the command line on the embedded default

def run_cli_cmd(words: list[str], cwd: Path, timeout: float, extra_env: Optional[dict] = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD3_CACHE"}
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "ld3_cli", *words, "device=cpu", "progress=false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"command": "ld3 " + " ".join(words + ["device=cpu", "progress=false"]), "wall_s": secs}


def bench_cli(timeout: float, extra_env: Optional[dict] = None) -> dict:
    """(d): wall-clock of the embedded default's commands, each store fresh (``ld3 train`` reads the teacher
    pairs ``ld3 teacher-sample`` wrote in the same store; ``ld3 run`` does everything in its own)."""
    res: dict[str, Any] = {"model": "mnist_gmm", "device": "cpu", "cpu_count": os.cpu_count(),
                           "env": dict(extra_env or {})}
    with tempfile.TemporaryDirectory(prefix="ld3-bench-") as d1:
        res["teacher_sample"] = run_cli_cmd(["teacher-sample"], Path(d1), timeout, extra_env)
        res["train_nfe5"] = run_cli_cmd(["train", "--nfe", "5"], Path(d1), timeout, extra_env)
    with tempfile.TemporaryDirectory(prefix="ld3-bench-") as d2:
        res["run"] = run_cli_cmd(["run"], Path(d2), timeout, extra_env)
    res["targets"] = {f"{k}_s": v for k, v in CLI_TARGETS_S.items()}
    return res


# ------------------------------------------------------------------------------------------------
# main

def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"{cpu} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def print_report(res: dict) -> None:
    m = res["meta"]
    tf32 = "n/a (CPU)" if m["tf32"] is None else ("on (default on Ampere+; --no-tf32 to turn off)" if m["tf32"]
                                                  else "off")
    print(f"\nld3 bench  {m['date']}  model={m['model']} ({m['params'] / 1e6:.2f}M parameters, "
          f"{m['buffers'] / 1e6:.2f}M buffer values, state shape {m['shape']})")
    print(f"device: {m['device']} ({m['device_name']}), torch {m['torch']}, TF32: {tf32}")
    print(f"speed options for (b)/(c): {m['speed']}")
    ls, le = m["load_start"], m.get("load_end", {})
    print(f"machine load (1-min load average / CPU pressure avg10): start {ls['loadavg_1m']} / "
          f"{ls['cpu_pressure_avg10']}, end {le.get('loadavg_1m')} / {le.get('cpu_pressure_avg10')} "
          f"on {ls['cpu_count']} cores")
    print("note: wall-clock timings; on a shared machine (load above the core count) they can be several times "
          "slower than on an idle one\n")
    tables = []
    if res.get("network"):
        tables.append(format_table(res["network"], [("variant", "variant"), ("batch_of", "batch of"), ("batch", "B"),
                                                    ("first_call_s", "1st call s"), ("forward_img_s", "fwd img/s"),
                                                    ("fwd_bwd_img_s", "fwd+bwd img/s"),
                                                    ("fwd_bwd_ckpt_img_s", "fwd+bwd ckpt img/s"),
                                                    ("fwd_bwd_peak_mb", "fwd+bwd peak MB")],
                                   "(a) network throughput"))
    t = res.get("train")
    if t:
        rows = [{"k": k, "v": t.get(k)} for k in ("n", "n_train", "n_val", "nfe", "teacher_nfe", "batch", "val_batch",
                                                  "loss", "grad_checkpoint", "init", "teacher_s", "setup_s", "train_s",
                                                  "wall_s", "iterations", "validations", "s_per_iter",
                                                  "step_s", "validation_s", "validation_fraction",
                                                  "peak_memory_mb", "peak_memory_kind")]
        tables.append(format_table(rows, [("k", "quantity"), ("v", "value")],
                                   "(b) ld3 training (UniPC-3, in-process; setup = trainer construction incl. "
                                   "baselines)"))
    if res.get("sampling"):
        tables.append(format_table(res["sampling"], [("nfe", "NFE"), ("batch", "B"), ("solve_s", "solve s"),
                                                     ("img_s", "img/s"), ("network_s", "net-only s"),
                                                     ("outside_network_fraction", "outside net"),
                                                     ("solver_math_fraction", "solver math"),
                                                     ("host_syncs_per_solve", "syncs/solve"),
                                                     ("host_syncs_per_solve_fwd_bwd", "syncs fwd+bwd"),
                                                     ("rmse_vs_float32", "RMSE vs fp32")],
                                   "(c) sampling with UniPC-3 (outside net = 1 - net-only/solve)"))
    c = res.get("cli")
    if c:
        rows = [{"what": c[k]["command"], "s": c[k]["wall_s"], "target": CLI_TARGETS_S.get(k)}
                for k in ("teacher_sample", "train_nfe5", "run")]
        tables.append(format_table(rows, [("what", "command (fresh store, CPU)"), ("s", "wall s"),
                                          ("target", "target s")],
                                   f"(d) embedded default through the CLI ({c['cpu_count']} cores, "
                                   f"extra environment {c['env'] or 'none'})"))
    for table in tables:
        print(table + "\n")


def _bench_meta(args: argparse.Namespace, argv: Optional[list[str]], model_name: str, model_over: list[str],
                device: torch.device, base, env: dict, speed: dict, tk: dict) -> dict[str, Any]:
    """The ``meta`` record of the results: what ran, where, with which settings (``load_end`` comes last)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": model_name, "model_overrides": model_over, "device": str(device),
        "device_name": describe_device(device), "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in base.parameters()),
        "buffers": sum(b.numel() for b in base.buffers()), "shape": list(base.shape), **env,
        "speed": speed, "argv": sys.argv[1:] if argv is None else list(argv),
        "timing": tk, "load_start": system_load(),
        "note": "wall-clock seconds, best of the timed runs (medians in *_median_s); CUDA timings bracketed "
                "by torch.cuda.synchronize; shared machines are noisy"}


def _warn_if_slow(args: argparse.Namespace, device: torch.device, params: int) -> None:
    """Tell the user when the paper's setting on a large network would take hours on a CPU."""
    if device.type == "cpu" and params > 10_000_000 and not args.skip_train and args.n >= 50:
        print(f"note: the paper's setting (--n {args.n}, {args.iters or 'all'} iterations) with a "
              f"{params / 1e6:.0f}M-parameter network takes hours on a CPU; shrink it with e.g. "
              "--n 4 --batch 2 --iters 2 --sample-batch 4 --teacher-batch 4", file=sys.stderr, flush=True)


def _network_batches(args: argparse.Namespace, train_batch: int) -> dict[str, int]:
    """(a)'s batches by label: ``--net-batches``, else the distinct training, validation and sampling batches."""
    if args.net_batches:
        return {f"B={b}": b for b in int_list(args.net_batches)}
    batches: dict[str, int] = {}
    for label, b in (("train", train_batch), ("validation", n_validation(args.n)), ("sampling", args.sample_batch)):
        if b not in batches.values():
            batches[label] = b
    return batches


def _network_variants(args: argparse.Namespace, device: torch.device) -> list[str]:
    """(a)'s speed variants: ``--variants``, else plain and channels_last (plus bf16 on CUDA)."""
    if args.variants:
        return [v.strip() for v in args.variants.split(",")]
    return ["plain", "channels_last"] + (["bf16"] if device.type == "cuda" else [])


def _run_sections(res: dict[str, Any], args: argparse.Namespace, base, cfg: dict, device: torch.device,
                  train_batch: int, nfes: list[int], tk: dict, speed: dict, extra_env: dict) -> None:
    """Run the sections (a)-(d) that were not skipped, in order, storing each one's results in ``res`` (and,
    with ``--json``, writing what is done after each section: a later failure or a kill keeps it)."""
    def save():
        if args.json:
            _write_json(res, Path(args.json))

    if not args.skip_network:
        batches = _network_batches(args, train_batch)
        variants = _network_variants(args, device)
        res["network"] = bench_network(base, device, batches, train_batch, variants, tk)
        save()
    model = optimize_denoiser(base, **speed)
    if not args.skip_train:
        print("  (b) training ...", file=sys.stderr, flush=True)
        res["train"] = bench_train(model, cfg, device, args, train_batch)
        save()
    if not args.skip_sampling:
        res["sampling"] = bench_sampling(model, base, cfg, device, nfes, args.sample_batch, tk, args.seed, train_batch)
        save()
    if args.cli:
        print("  (d) CLI on the embedded default ...", file=sys.stderr, flush=True)
        res["cli"] = bench_cli(args.cli_timeout, extra_env)


def _write_json(res: dict[str, Any], out: Path) -> None:
    """Write ``res`` to ``out`` atomically (through a temporary file beside it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2, default=_json_default) + "\n")
    os.replace(tmp, out)


def main(argv: Optional[list[str]] = None) -> int:
    args, model_name, model_over = parse_args(argv)
    try:
        # option values parsed before any measurement, so a typo fails at once rather than after an hour
        nfes = [] if args.skip_sampling else int_list(args.sampling_nfe)
        extra_env = cli_env(args.cli_env) if args.cli else {}
        device = resolve_device(args.device)
        env = configure(args, device)
        cfg = model_config(model_name, model_over)
        base = build(cfg, device, args.cache_dir)
        train_batch = int(args.batch or cfg.get("train_batch_size", 2))
        tk = {"reps": args.reps, "warmup": args.warmup, "min_time": args.min_time}
        speed = {"channels_last": args.channels_last, "compile": args.compile, "autocast": args.autocast,
                 "compile_mode": args.compile_mode}
        res: dict[str, Any] = {"meta": _bench_meta(args, argv, model_name, model_over, device, base, env, speed, tk)}
        _warn_if_slow(args, device, res["meta"]["params"])
        _run_sections(res, args, base, cfg, device, train_batch, nfes, tk, speed, extra_env)
        synchronize(device)
        res["meta"]["load_end"] = system_load()
    except Ld3Error as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    print_report(res)
    if args.json:
        out = Path(args.json)
        _write_json(res, out)
        print(f"results: {out}")
    return 0


def _json_default(v: Any):
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
