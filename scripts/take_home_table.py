"""What a user keeps when taking ld3's schedules home: stock dpmpp_2m on its usual lists, on a list trained for it,
and ld3's own sampler with LD3 and with the learned solver -- one table (docs/export.md, "Measured").

    python scripts/take_home_table.py mnist_gmm --nfe 4,6
    python scripts/take_home_table.py mnist_ddpm --nfe 4,6 -- model.path=/path/to/ddpm_mnist_starter.pth

Per NFE it runs, with the `ld3` command (every artifact cached in --cache, so a rerun recomputes nothing):

1. `ld3 teacher-sample` (LD3's 100 pairs) and `ld3 teacher-sample train=learned_solver` (1,000 pairs);
2. `ld3 train solver=k_dpmpp_2m` then `ld3 eval solver=k_dpmpp_2m eval.compare=[ld3,edm,time_uniform(,ays)]`: the
   stock sampler (k-diffusion's / ComfyUI's dpmpp_2m, the list ending at 0) on the Karras list (`edm`), on uniform
   native time (ComfyUI's "normal"), AYS where the model has it, and the list trained for it;
3. `ld3 train|eval solver=dpmpp solver.order=2`: ld3's DPM-Solver++(2M) with LD3 (the export's exact runners);
4. the same with `train=learned_solver`.

and prints the held-out RMSE to the teacher (and the model's Frechet metric) as a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

STOCK = ["solver=k_dpmpp_2m"]
LD3 = ["solver=dpmpp", "solver.order=2"]
LEARNED = [*LD3, "train=learned_solver"]


def ld3(stage: str, args: list, cache: Path) -> float:
    """Run `ld3 <stage> args` (cache_dir=cache); returns the wall seconds; stops the script on failure."""
    cmd = [sys.executable, "-m", "ld3_cli", stage, f"cache_dir={cache}", "progress=false", *args]
    print("$ ld3 " + " ".join(cmd[3:]), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`ld3 {stage}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def new_rows(cache: Path, before: int) -> list[dict]:
    path = cache / "results.csv"
    with path.open() as f:
        return list(csv.DictReader(f))[before:]


def row_count(cache: Path) -> int:
    path = cache / "results.csv"
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for _ in csv.DictReader(f))


def evaluate(cache: Path, args: list, compare: list) -> dict:
    """``{schedule: {metric: value}}`` of one `ld3 eval`."""
    before = row_count(cache)
    ld3("eval", [*args, "eval.compare=[" + ",".join(compare) + "]"], cache)
    out: dict = {}
    for r in new_rows(cache, before):
        out.setdefault(r["schedule"], {})[r["metric"]] = float(r["value"])
    return out


def cell(cache: Path, nfe: int, common: list, ays: bool) -> dict:
    base = [*common, f"nfe={nfe}"]
    times = {}
    for name, extra in (("stock", STOCK), ("ld3", LD3), ("learned", LEARNED)):
        times[name] = ld3("train", [*base, *extra], cache)
    stock = evaluate(cache, [*base, *STOCK], ["ld3", "edm", "time_uniform", *(["ays"] if ays else [])])
    return {"karras": stock["edm"], "uniform": stock["time_uniform"], "ays": stock.get("ays"), "portable": stock["ld3"],
            "ld3": evaluate(cache, [*base, *LD3], ["ld3"])["ld3"],
            "learned": evaluate(cache, [*base, *LEARNED], ["ld3"])["ld3"], "train_seconds": times}


def fmt(m, metric: str) -> str:
    return "-" if m is None or metric not in m else f"{m[metric]:.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model config name (mnist_gmm, mnist_ddpm, ...)")
    p.add_argument("--nfe", default="4,6", help="comma-separated NFEs (default 4,6)")
    p.add_argument("--cache", default="ld3-cache-take-home", help="the store (default ./ld3-cache-take-home)")
    p.add_argument("--ays", action="store_true", help="also the AYS list (models with model.ays_family)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    a.overrides = argv[cut + 1:]  # more ld3 overrides after --, e.g. model.path=...
    cache = Path(a.cache).resolve()
    common = [f"model={a.model}", *a.overrides]
    ld3("teacher-sample", common, cache)
    ld3("teacher-sample", [*common, "train=learned_solver"], cache)
    rows = []
    for nfe in [int(v) for v in a.nfe.split(",")]:
        c = cell(cache, nfe, common, a.ays)
        metric = next((m for m in ("fid", "fd_exact", "fd_data") if m in c["portable"]), None)
        cols = [c["karras"], c["uniform"], c["ays"], c["portable"], c["ld3"], c["learned"]]
        rows.append(f"| {a.model} | {nfe} | " + " | ".join(fmt(m, "rmse") for m in cols)
                    + (" | " + " / ".join(fmt(m, metric) for m in cols) if metric else "") + " | "
                    + ", ".join(f"{k} {v:.0f} s" for k, v in c["train_seconds"].items()) + " |")
    print("\n| model | NFE | dpmpp_2m, Karras | dpmpp_2m, uniform t | dpmpp_2m, AYS | dpmpp_2m, portable LD3 | "
          "ld3 dpmpp-2, LD3 | ld3 dpmpp-2, learned solver | same, " + (metric or "-") + " | train wall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
