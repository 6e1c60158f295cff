#!/usr/bin/env python
"""What ld3 does on one GPU, measured in one run of at most ``--budget-s`` seconds (default 480: 8 minutes).

    scripts/device_check.sh [OUT_DIR] [options]          # the wrapper: installs carried wheels, then runs this
    python scripts/device_check.py --out OUT_DIR [--budget-s 480] [--mnist-ddpm PATH] [--smoke]

The steps, in order of priority; each is a subprocess whose timeout is what is left of the budget (a step
that cannot start with at least its ``min_s`` left is skipped and says so), and ``device_check.json`` /
``device_check.md`` are rewritten after each step, so a run cut short keeps what finished:

1. ``bench``       scripts/bench.py (a)-(c) on ``edm_cifar10_random`` (EDM DDPM++ CIFAR-10, 55.7M parameters)
                   in the paper's CIFAR-10 setting: 100 teacher pairs at NFE 20, LD3 UniPC-3 at NFE 10, 50/50
                   split, 50 + 125 iterations, LPIPS-VGG loss, ld3's default batch sizes; (a) plain,
                   channels_last, bf16 autocast and both; (c) host synchronisations per solve.
2. ``run``         ``ld3 run experiment=cifar10_paper model=edm_cifar10_random`` end to end with 10,000 samples
                   and one FID pass (``eval.compare=[ld3]``); the time of each stage from its first output line.
3. ``bench_fast``  (b) and (c) again with channels_last + bf16 autocast.
4. ``learned``     the learned-solver preset (``train=learned_solver``: 1,000 pairs, LD3's phases then phase 3
                   on the coefficients) on the same network, one run: LD3's time and the whole run's.
5. ``compile``     (a) and (c) with torch.compile + channels_last + bf16 (the first call includes compiling).
6. ``grid``        the MNIST DDPM learned-solver grid at its defaults (``--jobs 12``), when ``--mnist-ddpm`` names
                   the weights.

Every network here has random weights -- the EDM network, LPIPS' VGG backbone (its calibrated heads come with
the lpips package) and the FID Inception -- and the FID reference is N(0, I): they cost what trained ones cost,
so the times hold, and no quality number of this run means anything.  ``--smoke`` shrinks everything to a few
seconds of work on a CPU (the tests run it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
# the targets of docs/benchmarks.md ("GPU"); the official LD3 code took 338 s and 58.0 GB on an H200 here
TARGETS = {"train_wall_s": 34.0, "train_peak_gb": 16.0, "sampling_vs_network": 0.90, "outside_network": 0.05}
# a shrunk DDPM++ (16x16, 16 channels, one block per level) for --smoke
SMOKE_NET = ["model.init_kwargs.img_resolution=16", "model.init_kwargs.model_channels=16",
             "model.init_kwargs.channel_mult=[1,1]", "+model.init_kwargs.num_blocks=1"]
VGG_FILE = "vgg16-397923af.pth"
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


# ------------------------------------------------------------------------------------------------
# random-weight files (timing only)

def make_random_assets(folder: Path) -> dict[str, str]:
    """Random LPIPS-VGG backbone, random FID Inception and an N(0, I) CIFAR-10 FID reference in ``folder``.

    Same shapes and layouts as the real files (torchvision's ``features.{i}.*`` VGG-16 state dict,
    pytorch-fid's Inception state dict, EDM's ``cifar10-32x32.npz`` with ``mu`` [2048] and ``sigma``
    [2048, 2048]), so they cost what the real ones cost.  Written once; reused when present."""
    import numpy as np
    import torch
    import torchvision

    from ld3_cli.metrics.inception import fid_inception_architecture

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vgg, inception = folder / VGG_FILE, folder / INCEPTION_FILE
    ref = folder / "refs" / "cifar10-32x32.npz"
    if not vgg.is_file():
        feats = torchvision.models.vgg16(weights=None).features.state_dict()
        torch.save({f"features.{k}": v for k, v in feats.items()}, vgg)
    if not inception.is_file():
        torch.save(fid_inception_architecture().state_dict(), inception)
    if not ref.is_file():
        ref.parent.mkdir(exist_ok=True)
        np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    return {"vgg": str(vgg), "inception": str(inception), "refs": str(ref.parent)}


# ------------------------------------------------------------------------------------------------
# the steps

def _bench_common(smoke: bool, device: str) -> list[str]:
    """bench.py arguments shared by every bench step: the network and, for --smoke, a tiny workload."""
    args = ["scripts/bench.py", "model=edm_cifar10_random"]
    args += [o.lstrip("+") for o in SMOKE_NET] if smoke else []  # bench.py merges keys; Hydra wants + for new ones
    args.append(f"--device={device}")
    if smoke:
        args += ["--n", "4", "--iters", "2", "--sample-batch", "4", "--teacher-batch", "4", "--teacher-nfe", "4",
                 "--nfe", "3", "--sampling-nfe", "3", "--reps", "1", "--warmup", "0", "--min-time", "0"]
    else:
        args += ["--min-time", "0.5"]
    return args


def plan(args, assets: dict[str, str]) -> list[dict]:
    """The steps: ``name``, ``argv`` (run from the repository root), ``min_s`` (skip with less left), ``what``."""
    out, py, smoke, dev = Path(args.out), sys.executable, args.smoke, args.device
    lpips = ["--loss", "lpips", "--lpips-weights", assets["vgg"]]
    cache = str(out / "store")
    variants = "plain,channels_last" if smoke else "plain,channels_last,bf16,channels_last+bf16"
    steps = [
        {"name": "bench", "min_s": 60,
         "what": "(a)-(c), the paper's CIFAR-10 setting, plain network",
         "argv": [py, *_bench_common(smoke, dev), *lpips, "--variants", variants, "--json", str(out / "bench.json")]},
    ]
    run = [py, "-m", "ld3_cli", "run", "experiment=cifar10_paper", "model=edm_cifar10_random", "sample.n=10000",
           "eval.compare=[ld3]", f"eval.inception_weights={assets['inception']}",
           f"train.lpips_weights={assets['vgg']}", f"cache_dir={cache}", "progress=false", f"device={dev}"]
    if smoke:
        run += SMOKE_NET + ["sample.n=8", "teacher.n=4", "teacher.nfe=4", "nfe=3", "train.iters_phase1=1",
                            "train.iters_phase2=1", "eval.heldout_n=4", "teacher.check_n=0"]
    steps.append({"name": "run", "min_s": 60, "argv": run, "env": {"LD3_REFS": assets["refs"]},
                  "what": "ld3 run end to end, 10,000 samples and one FID pass (random Inception: timing only)"})
    steps.append({"name": "bench_fast", "min_s": 45, "what": "(b)-(c) with channels_last + bf16 autocast",
                  "argv": [py, *_bench_common(smoke, dev), *lpips, "--skip-network", "--channels-last",
                           "--autocast", "bf16", "--json", str(out / "bench_fast.json")]})
    learned = [py, "scripts/learned_solver_grid.py", "edm_cifar10_random", "--solvers", "unipc:3",
               "--nfe", "3" if smoke else "10", "--pairs", "8" if smoke else "1000",
               "--heldout", "4" if smoke else "100", "--no-alone", "--out", str(out / "learned.jsonl"), "--",
               f"cache_dir={cache}", f"train.lpips_weights={assets['vgg']}", f"device={dev}"]
    if smoke:
        learned += SMOKE_NET + ["teacher.nfe=4", "train.iters_phase1=1", "train.iters_phase2=1",
                                "train.iters_phase3=2", "teacher.check_n=0"]
    steps.append({"name": "learned", "min_s": 90, "argv": learned,
                  "what": "learned-solver preset on the same network: LD3's phases and phase 3, one run"})
    if not smoke:  # compiling takes minutes on a CPU
        steps.append({"name": "compile", "min_s": 60,
                      "what": "(a) and (c) with torch.compile + channels_last + bf16",
                      "argv": [py, *_bench_common(smoke, dev), "--skip-train", "--variants",
                               "compile+channels_last+bf16", "--net-batches", "2,100", "--compile",
                               "--channels-last", "--autocast", "bf16", "--sampling-nfe", "10",
                               "--json", str(out / "bench_compile.json")]})
    if args.mnist_ddpm:
        grid = [py, "scripts/learned_solver_grid.py", "mnist_ddpm", "--out", str(out / "grid.jsonl")]
        grid += (["--solvers", "dpmpp:2", "--nfe", "3", "--pairs", "8", "--heldout", "8"] if smoke
                 else ["--jobs", str(args.grid_jobs)])
        grid += ["--", f"model.path={args.mnist_ddpm}", f"cache_dir={out / 'store_mnist'}", f"device={dev}"]
        if smoke:
            grid += ["train.iters_phase1=1", "train.iters_phase2=1", "train.iters_phase3=2", "teacher.check_n=0"]
        steps.append({"name": "grid", "min_s": 120, "argv": grid,
                      "what": "MNIST DDPM learned-solver grid at its defaults"})
    return steps


def run_step(step: dict, timeout: float, log: Path) -> dict:
    """Run one step with a timeout; every output line goes to ``log`` stamped with the seconds since the start.

    Returns ``{"status": ok|failed|timeout, "wall_s", "returncode", "lines": [(t, line), ...]}``."""
    env = {**os.environ, **step.get("env", {}), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    t0 = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with open(log, "w") as f:
        f.write("$ " + " ".join(step["argv"]) + "\n")
        proc = subprocess.Popen(step["argv"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, start_new_session=True)

        def pump():
            for line in proc.stdout:
                t = time.perf_counter() - t0
                lines.append((t, line.rstrip("\n")))
                f.write(f"[{t:7.1f}s] {line}")
                f.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
            status = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = "timeout"
        reader.join(timeout=5)
    return {"status": status, "wall_s": time.perf_counter() - t0, "returncode": proc.returncode, "lines": lines}


# ------------------------------------------------------------------------------------------------
# what each step's output says

def _load_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _network_row(bench: dict, variant: str, batch: int) -> Optional[dict]:
    return next((r for r in bench.get("network", []) if r["variant"] == variant and r["batch"] == batch), None)


def summarize_bench(bench: dict) -> dict:
    """The numbers the targets read from a bench.py JSON: training wall and memory, the sampling rate
    against the network alone, host syncs per solver step, and the share of a training iteration spent
    outside the denoiser (network time from (a): NFE checkpointed forward+backward calls at the training
    batch, plus one forward per call at the validation batch per validation)."""
    s: dict[str, Any] = {}
    t = bench.get("train")
    if t:
        s.update(train_wall_s=t["wall_s"], train_s=t["train_s"], setup_s=t["setup_s"], teacher_s=t["teacher_s"],
                 iterations=t["iterations"], s_per_iter=t["s_per_iter"], loss=t["loss"],
                 validation_fraction=t["validation_fraction"], peak_gb=t["peak_memory_mb"] / 1024,
                 peak_kind=t["peak_memory_kind"], batch=t["batch"])
    for row in bench.get("sampling", []):
        tag = f"nfe{row['nfe']}"
        s[f"sampling_vs_network_{tag}"] = row["network_s"] / row["solve_s"]
        s[f"sampling_img_s_{tag}"] = row["img_s"]
        if row.get("host_syncs_per_solve") is not None:
            s[f"syncs_per_step_{tag}"] = row["host_syncs_per_solve"] / row["network_calls"]
            s[f"syncs_per_step_fwd_bwd_{tag}"] = row["host_syncs_per_solve_fwd_bwd"] / row["network_calls"]
        if row.get("rmse_vs_float32") is not None:
            s[f"rmse_vs_float32_{tag}"] = row["rmse_vs_float32"]
    if t and bench.get("network") and bench.get("sampling"):
        calls = max(r["network_calls"] for r in bench["sampling"] if r["nfe"] == t["nfe"]) \
            if any(r["nfe"] == t["nfe"] for r in bench["sampling"]) else t["nfe"]
        train_row = _network_row(bench, "plain", t["batch"])
        val_row = _network_row(bench, "plain", t["n_val"])
        if train_row and val_row and "fwd_bwd_ckpt_s" in train_row:
            per_val = t["validations"] / max(t["iterations"], 1)
            net = calls * (train_row["fwd_bwd_ckpt_s"] + per_val * val_row["forward_s"])
            s["network_s_per_iter"] = net
            s["outside_network"] = 1 - net / t["s_per_iter"]  # negative: (a)'s calls cost more than in training
    return s


def summarize_run(lines: list[tuple[float, str]]) -> dict:
    """Stage times of ``ld3 run`` from the arrival of its ``[k/3]`` lines and its ``done in`` line."""
    marks = {}
    for t, line in lines:
        for key, prefix in (("teacher_done", "[1/3]"), ("train_done", "[2/3]")):
            if line.startswith(prefix) and key not in marks:
                marks[key] = t
        if line.startswith("done in"):
            marks["done"] = t
    out = {}
    if "teacher_done" in marks:
        out["teacher_s"] = marks["teacher_done"]
    if "train_done" in marks and "teacher_done" in marks:
        out["train_s"] = marks["train_done"] - marks["teacher_done"]
    if "done" in marks and "train_done" in marks:
        out["sample_eval_s"] = marks["done"] - marks["train_done"]
    return out


def summarize_learned(path: Path) -> dict:
    """LD3's part and the whole learned-solver run (one run) from the grid's JSON line."""
    if not path.is_file():
        return {}
    rec = [json.loads(x) for x in path.read_text().splitlines() if x.strip()][-1]
    t = rec["time"]
    return {"ld3_wall_s": t["ld3_wall"], "whole_wall_s": t["wall"], "phase3_s": t["wall"] - t["ld3_wall"],
            "ratio": t["wall"] / t["ld3_wall"], "ld3_rmse": rec["ld3"]["rmse"],
            "learned_steps_rmse": rec["learned_steps"]["rmse"], "pairs": rec["pairs"]}


def _grid_module():
    """scripts/learned_solver_grid.py as a module (its rendering and ratios)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("learned_solver_grid", REPO / "scripts" / "learned_solver_grid.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def summarize_grid(path: Path) -> dict:
    """Cells finished, the geometric mean of (learned solver + steps) / LD3, and the training-time ranges."""
    if not path.is_file():
        return {}
    grid = _grid_module()
    recs = grid._read(str(path))
    ld3 = [r["time"]["ld3_wall"] for r in recs]
    whole = [r["time"]["wall"] for r in recs]
    return {"cells": len(recs), "gmean_learned_steps_over_ld3": grid._gmean([grid._ratio(r) for r in recs]),
            "ld3_wall_s_min": min(ld3), "ld3_wall_s_max": max(ld3), "whole_wall_s_min": min(whole),
            "whole_wall_s_max": max(whole), "table": grid.render(recs)}


def summarize(name: str, result: dict, out: Path) -> dict:
    files = {"bench": "bench.json", "bench_fast": "bench_fast.json", "compile": "bench_compile.json"}
    if name in files:
        bench = _load_json(out / files[name])
        return summarize_bench(bench) if bench else {}
    if name == "run":
        return summarize_run(result["lines"])
    if name == "learned":
        return summarize_learned(out / "learned.jsonl")
    if name == "grid":
        return summarize_grid(out / "grid.jsonl")
    return {}


# ------------------------------------------------------------------------------------------------
# the report

def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _target_rows(steps: dict) -> list[str]:
    """One markdown row per target: value, target, met."""
    rows = []

    def row(what, value, target, ok):
        rows.append(f"| {what} | {value} | {target} | {'yes' if ok else 'no' if ok is not None else '-'} |")

    for name, label in (("bench", "plain"), ("bench_fast", "channels_last + bf16")):
        s = steps.get(name, {}).get("summary", {})
        if "train_wall_s" in s:
            row(f"LD3 training, paper CIFAR-10 setting ({label}; trainer set-up + {s['iterations']} iterations, "
                f"loss {s['loss']})", f"{s['train_wall_s']:.1f} s", f"<= {TARGETS['train_wall_s']:.0f} s",
                s["train_wall_s"] <= TARGETS["train_wall_s"])
            row(f"peak memory in training ({label}; {s['peak_kind']})", f"{s['peak_gb']:.2f} GB",
                f"<= {TARGETS['train_peak_gb']:.0f} GB", s["peak_gb"] <= TARGETS["train_peak_gb"])
        for key in sorted(k for k in s if k.startswith("sampling_vs_network_")):
            nfe = key.rsplit("nfe", 1)[1]
            row(f"sampling rate / the bare network's, NFE {nfe} ({label})", f"{100 * s[key]:.1f} %",
                f">= {100 * TARGETS['sampling_vs_network']:.0f} %", s[key] >= TARGETS["sampling_vs_network"])
        if "outside_network" in s:
            row(f"time outside the network in a training iteration ({label})",
                f"{100 * s['outside_network']:.1f} % of {s['s_per_iter'] * 1000:.0f} ms",
                f"< {100 * TARGETS['outside_network']:.0f} %", s["outside_network"] < TARGETS["outside_network"])
        for key in sorted(k for k in s if k.startswith("syncs_per_step_")):
            row(f"host synchronisations per solver step, {key[len('syncs_per_step_'):].replace('_', ' ')} "
                f"({label})", _fmt(s[key]), "0", s[key] == 0)
    return rows


def render(report: dict) -> str:
    m = report["meta"]
    lines = [f"# ld3 device check, {m['date']}", "",
             f"Device: {m['device_name']}; torch {m['torch']}, CUDA {m['cuda']}, Python {m['python']}; "
             f"{m['cpu_count']} CPU cores.  Command: `{m['command']}`.  Budget {m['budget_s']:.0f} s; "
             f"total {report.get('total_s', 0):.0f} s.", "",
             "All networks have random weights (EDM, LPIPS-VGG backbone, FID Inception; FID reference N(0, I)): "
             "times only.", "", "## Targets", "", "| measurement | value | target | met |", "|---|---|---|---|"]
    lines += _target_rows(report["steps"]) or ["| (no step with a target finished) | - | - | - |"]
    lines += ["", "## Steps", "", "| step | what | status | wall s | numbers |", "|---|---|---|---|---|"]
    for name, st in report["steps"].items():
        nums = ", ".join(f"{k} {_fmt(v)}" for k, v in st.get("summary", {}).items() if k != "table")
        lines.append(f"| {name} | {st['what']} | {st['status']} | {_fmt(st.get('wall_s'), 4)} | {nums or '-'} |")
    for name, st in report["steps"].items():
        if st.get("summary", {}).get("table"):
            lines += ["", f"### {name}", "", st["summary"]["table"]]
    for name, st in report["steps"].items():
        if st.get("tail"):
            lines += ["", f"### {name}: last lines of its log", "", "```", *st["tail"], "```"]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict, out: Path) -> None:
    _atomic_write(out / "device_check.json", json.dumps(report, indent=2, default=str) + "\n")
    _atomic_write(out / "device_check.md", render(report))


def _meta(args, argv: list[str]) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device_name": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.machine()})",
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "budget_s": args.budget_s,
            "command": "scripts/device_check.sh " + " ".join(argv)}


# ------------------------------------------------------------------------------------------------

TAIL_LINES = 25


def main(argv: Optional[list[str]] = None, clock: Callable[[], float] = time.perf_counter) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="device-check", help="folder for the JSON, the markdown and the logs")
    ap.add_argument("--budget-s", type=float, default=float(os.environ.get("LD3_DEVICE_BUDGET_S", 480)),
                    help="seconds for the whole check (default 480, or $LD3_DEVICE_BUDGET_S)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    ap.add_argument("--mnist-ddpm", default=None, help="the MNIST DDPM weights (ddpm_mnist_starter.pth) for the grid")
    ap.add_argument("--grid-jobs", type=int, default=12, help="grid cells at once (each its own process)")
    ap.add_argument("--only", default=None, help="comma list of steps to run (default: all)")
    ap.add_argument("--smoke", action="store_true", help="a tiny workload (seconds on a CPU) to check the plumbing")
    args = ap.parse_args(argv)
    t0 = clock()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    if args.mnist_ddpm and not Path(args.mnist_ddpm).is_file():
        ap.error(f"--mnist-ddpm {args.mnist_ddpm}: no such file (the MNIST DDPM weights, ddpm_mnist_starter.pth)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA device here; this check is for a GPU (--device cpu --smoke checks the plumbing)")
    report: dict[str, Any] = {"meta": _meta(args, argv), "steps": {}}
    assets = make_random_assets(out / "random-weights")
    only = set(args.only.split(",")) if args.only else None
    for step in plan(args, assets):
        name = step["name"]
        if only is not None and name not in only:
            continue
        left = args.budget_s - (clock() - t0)
        entry: dict[str, Any] = {"what": step["what"], "command": " ".join(step["argv"])}
        if left < step["min_s"]:
            entry.update(status=f"skipped: {left:.0f} s left of the budget, needs at least {step['min_s']} s "
                                f"(run it alone: --only {name})")
        else:
            print(f"device_check: {name} ({step['what']}), up to {left:.0f} s", flush=True)
            result = run_step(step, left, out / f"{name}.log")
            entry.update(status=result["status"], wall_s=result["wall_s"], returncode=result["returncode"],
                         tail=[line for _, line in result["lines"][-TAIL_LINES:]])
            try:
                entry["summary"] = summarize(name, result, out)
            except (KeyError, ValueError, TypeError) as e:  # a partial output: keep the rest of the report
                entry["summary_error"] = repr(e)
            print(f"device_check: {name} {result['status']} in {result['wall_s']:.1f} s", flush=True)
        report["steps"][name] = entry
        report["total_s"] = clock() - t0
        write_report(report, out)
    print(render(report))
    return 0 if all(s["status"] == "ok" or s["status"].startswith("skipped") for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
