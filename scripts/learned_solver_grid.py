"""LD3 against the learned solver, cell by cell, on the same teacher pairs (docs/reproduction.md).

    python scripts/learned_solver_grid.py mnist_gmm --solvers dpmpp:2,unipc:3,ipndm:3 --nfe 3,4,5,6 --pairs 1000
    python scripts/learned_solver_grid.py mnist_ddpm --pairs 400 -- model.path=/path/to/ddpm_mnist_starter.pth
    python scripts/learned_solver_grid.py mnist_ddpm --jobs 12 -- model.path=...  # a GPU: every cell at once
    python scripts/learned_solver_grid.py --render results.jsonl         # the markdown tables of finished cells
    python scripts/learned_solver_grid.py --summary seed0.jsonl seed1.jsonl  # one row per grid (seeds, variants)

For each cell (model, solver:order, NFE), on the first ``--pairs`` teacher pairs of ``ld3 teacher-sample``
(half of them validate), with the ``train=learned_solver`` settings (or the preset an extra ``train=...`` names):

* every closed-form baseline (the best is reported);
* LD3 (time steps + decoupled offsets) and the learned solver + steps come from **one** run with
  ``train.learn=[steps,offsets,coefficients]``: LD3 is that run's best state when its phase 2 ended
  (identical to an LD3-only run: phase 3 starts after it), so the training times compare in one run;
* the learned solver alone (``train.learn=[coefficients]``, on the best baseline);
* with ``residual`` in the preset's ``train.learn`` (or an override's), the residual operator (phase 4) on top of the
  learned solver + steps, from the same run;
* the held-out RMSE of each on ``--heldout`` noises never used in training (seeds ``sample.seed_offset + i``, the
  ones ``ld3 eval`` draws), and for a model that can draw exact samples (the mixture) ``fd_exact`` of 5,000
  samples against 5,000 exact ones.

One JSON line per cell is appended to ``--out``; ``--render`` prints the tables with the geometric mean of
(learned solver + steps) / LD3.  The store (``cache_dir``) keeps the teacher pairs between runs.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[1]
BASELINES = ("time_uniform", "time_quadratic", "logsnr", "edm")


@functools.lru_cache(maxsize=1)
def _models():
    """The grid's model cache: every cell on one model loads it once."""
    from ld3_cli.stages.context import ModelCache

    return ModelCache()


def context(model: str, solver: str, order: int, nfe: int, pairs: int, extra: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ld3_cli.cli.apps import config_dir
    from ld3_cli.stages.context import StageContext

    # the train preset: train=learned_solver unless the extra overrides name another (train=learned_solver_guided)
    presets = [e for e in extra if e.startswith("train=")]
    overrides = [*(presets or ["train=learned_solver"]), f"model={model}", f"solver={solver}", f"solver.order={order}",
                 f"nfe={nfe}", f"teacher.n={pairs}", "progress=false", *(e for e in extra if e not in presets)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="grid"):
        cfg = compose("train", overrides=overrides)
    return StageContext(cfg, "train", overrides, models=_models())


def heldout_errors(ctx, run, noises, targets, cond=None) -> dict:
    """Held-out RMSE (pooled) and the median per-image RMSE of ``run(x_T, cond) -> x0`` (``cond``: the held-out
    pairs' conditions, None for an unconditional model)."""
    def part(i):
        return run(noises[i:i + 250] * ctx.model.schedule.sigma_max, None if cond is None else cond[i:i + 250])

    with torch.no_grad():
        out = torch.cat([ctx.model.decode(part(i)) for i in range(0, len(noises), 250)])
    per = ((out.float() - targets.float()) ** 2).flatten(1).mean(1)
    return {"rmse": float(per.mean().sqrt()), "median": float(per.sqrt().median())}


FD_N = 5000  # samples per side of fd_exact


def exact_statistics(ctx) -> tuple:
    """Pixel statistics ``(mu, sigma)`` of :data:`FD_N` exact samples of the model (one set for a whole cell)."""
    from ld3_cli.metrics.pixel_fd import exact_sample_images, pixel_statistics

    return pixel_statistics(exact_sample_images(ctx.model, FD_N, int(ctx.cfg.seed)))[:2]


def fd_exact(ctx, run, exact: tuple) -> float:
    """Pixel-space Frechet distance of :data:`FD_N` samples (eval's seeds) to the exact statistics ``exact``."""
    from ld3_cli.data.seeds import noise_for_seeds
    from ld3_cli.metrics.frechet import frechet_distance
    from ld3_cli.metrics.images import to_uint8
    from ld3_cli.metrics.pixel_fd import pixel_statistics

    off = int(ctx.cfg.sample.seed_offset)
    noises = noise_for_seeds(range(off, off + FD_N), tuple(ctx.model.shape)).to(ctx.device, ctx.model.dtype)
    with torch.no_grad():
        images = [to_uint8(ctx.model.decode(run(noises[i:i + 500] * ctx.model.schedule.sigma_max)))
                  for i in range(0, FD_N, 500)]
    return float(frechet_distance(*pixel_statistics(iter(images))[:2], *exact))


def train(ctx, teacher, learn: list[str]):
    """One training run, as ``ld3 train`` runs it (``train.restarts`` included); ``(result, {"wall", "ld3_wall",
    "cpu"})`` -- ``ld3_wall``: the time when LD3's phases ended (every restart's), the run's construction and
    baseline scoring included (LD3 pays them too)."""
    from ld3_cli.ld3 import LD3Trainer
    from ld3_cli.ld3.restarts import best_restart

    opts = ctx.settings.train.replace(learn=learn)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer, record = best_restart(
        opts, lambda k, o: LD3Trainer(ctx.model, ctx.solver_name, ctx.solver_options, ctx.nfe, teacher["noises"],
                                      teacher["images"], teacher.get("cond"), o))
    ld3_wall = time.perf_counter() - t0
    res = trainer.run().with_restarts(record)
    return res, {"wall": time.perf_counter() - t0, "ld3_wall": ld3_wall, "cpu": time.process_time() - c0}


def cell(model: str, solver: str, order: int, nfe: int, pairs: int, heldout: int, extra: list[str],
         alone: bool = True) -> dict:
    from ld3_cli.schedules import discretize
    from ld3_cli.solvers import solve
    from ld3_cli.stages.artifacts import teacher_artifact

    ctx = context(model, solver, order, nfe, pairs, extra)
    teacher = teacher_artifact(ctx).tensors()
    held = teacher_artifact(ctx, seed_start=int(ctx.cfg.sample.seed_offset), n=heldout).tensors()
    noises, targets = held["noises"].to(ctx.device, ctx.model.dtype), held["images"].to(ctx.device)
    cond = held.get("cond")
    cond = None if cond is None else cond.to(ctx.device)
    rec = {"model": model, "solver": solver, "order": order, "nfe": nfe, "pairs": pairs, "heldout": heldout,
           "extra": extra, "baselines": {}}
    for name in BASELINES:
        sig = discretize(name, ctx.n_steps, ctx.model.schedule)
        rec["baselines"][name] = heldout_errors(
            ctx, lambda x, c, s=sig: solve(ctx.solver_name, ctx.model, x, s, cond=c, **ctx.solver_options), noises,
            targets, cond)
    residual = "residual" in ctx.settings.train.learn  # the preset (or an override) learns the residual operator too
    full, rec["time"] = train(ctx, teacher, ["steps", "offsets", "coefficients", *(["residual"] if residual else [])])
    runs = {"ld3": full.phase_samplers["offsets"].solve, "learned_steps": full.solve}
    if residual:  # + steps is phase 3's result; the residual operator's is phase 4's (or phase 3's, if no better)
        runs.update(learned_steps=full.phase_samplers["coefficients"].solve, residual=full.solve)
    if alone:
        only, rec["time_coefficients_only"] = train(ctx, teacher, ["coefficients"])
        runs["learned"] = only.solve
    # fd_exact for an unconditional model only (a guided one has no exact samples, a conditional one draws its
    # labels per seed, uniformly, unlike the exact samples' class frequencies)
    exact = exact_statistics(ctx) if hasattr(ctx.model, "sample_exact") and cond is None else None
    for name, run in runs.items():
        rec[name] = heldout_errors(ctx, lambda x, c, r=run: r(ctx.model, x, c), noises, targets, cond)
        if exact is not None:
            rec[name]["fd_exact"] = fd_exact(ctx, lambda x, r=run: r(ctx.model, x), exact)
    rec["ld3"]["val"] = full.after_phase["offsets"]
    rec["learned_steps"]["val"] = full.after_phase["coefficients"] if residual else full.best_val
    if residual:
        rec["residual"]["val"] = full.best_val
    return rec


def _bold_lowest(values: list[float]) -> list[str]:
    """The values as table cells (4 decimals), the lowest in bold."""
    low = min(values)
    return [f"**{v:.4f}**" if v == low else f"{v:.4f}" for v in values]


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def _ratio(r: dict, metric: str = "rmse") -> float:
    """(learned solver + steps) / LD3 of one cell's record, on ``metric`` (``rmse`` held out, ``val`` MSE)."""
    return r["learned_steps"][metric] / r["ld3"][metric]


def _time_ratio(r: dict) -> float:
    """Whole-run training time over its LD3 part, in one run."""
    return r["time"]["wall"] / r["time"]["ld3_wall"]


def _settings(r: dict) -> str:
    """The cell's extra overrides that are not paths or places (``model.guidance_scale=7.5``), as one string."""
    keep = [e for e in r.get("extra", []) if not e.startswith(("cache_dir=", "model.path="))]
    return " ".join(keep)


RUNS = ("ld3", "learned", "learned_steps", "residual")  # a record's held-out runs, in table order


def _header(rows: list[dict], fd: bool, varied: bool) -> list[str]:
    residual = any("residual" in r for r in rows)
    cols = (["settings"] if varied else []) + ["solver", "NFE", "best baseline", "LD3", "learned solver",
                                               "learned solver + steps", *(["+ residual"] if residual else []),
                                               "+ steps / LD3", "training s: LD3 / + steps"]
    cols += ["fd_exact: LD3 / + steps"] if fd else []
    return [f"#### {rows[0]['model']}: {rows[0]['pairs']} teacher pairs, held-out RMSE on {rows[0]['heldout']:,} "
            "noises", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]


def _row(r: dict, fd: bool, varied: bool, residual: bool) -> str:
    best = min(r["baselines"], key=lambda k: r["baselines"][k]["rmse"])
    t = r["time"]
    cols = [_settings(r)] * varied + [f"{r['solver']}-{r['order']}", str(r["nfe"]),
                                      f"{r['baselines'][best]['rmse']:.4f} ({best})"]
    shown = RUNS if residual else RUNS[:-1]
    bold = iter(_bold_lowest([r[k]["rmse"] for k in shown if k in r]))
    cols += [next(bold) if k in r else "-" for k in shown]
    cols += [f"{_ratio(r):.3f}", f"{t['ld3_wall']:.0f} / {t['wall']:.0f} ({_time_ratio(r):.2f}x)"]
    if fd:
        cols.append(f"{r['ld3']['fd_exact']:.2f} / {r['learned_steps']['fd_exact']:.2f}")
    return "| " + " | ".join(cols) + " |"


def render(records: list[dict]) -> str:
    """Markdown tables (one per model) and the geometric mean of (learned solver + steps) / LD3; a column names
    the settings when the cells differ in them (e.g. a grid over guidance scales)."""
    out = []
    for model in sorted({r["model"] for r in records}):
        rows = sorted((r for r in records if r["model"] == model), key=lambda r: (_settings(r), r["solver"], r["nfe"]))
        fd = "fd_exact" in rows[0]["ld3"]
        varied = len({_settings(r) for r in rows}) > 1
        residual = any("residual" in r for r in rows)
        out += _header(rows, fd, varied) + [_row(r, fd, varied, residual) for r in rows]
        ratios = [_ratio(r) for r in rows]
        gm = _gmean(ratios)
        out += ["", f"Geometric mean of (learned solver + steps) / LD3 over {len(ratios)} cells: **{gm:.3f}** "
                    f"(worst cell {max(ratios):.3f}, best {min(ratios):.3f}).", ""]
    return "\n".join(out)


def summary(grids: dict[str, list[dict]]) -> str:
    """One markdown row per finished grid (e.g. one per training seed): the geometric mean of (learned solver +
    steps) / LD3, its worst cell, the cells more than 2 % worse than LD3, the geometric mean of the validation MSE
    ratio, the cells whose ``fd_exact`` is above LD3's, and the range of whole-run / LD3 training time."""
    out = ["| grid | overrides | cells | geometric mean | worst cell | cells > 2 % worse | validation MSE ratio | "
           "fd_exact above LD3's | training time / LD3's |", "|" + "---|" * 9]
    for name, recs in grids.items():
        ratio = {f"{r['solver']}-{r['order']} NFE {r['nfe']}": _ratio(r) for r in recs}
        worst = max(ratio, key=ratio.get)
        val = _gmean([_ratio(r, "val") for r in recs])
        with_fd = [r for r in recs if "fd_exact" in r["ld3"]]
        fd = sum(r["learned_steps"]["fd_exact"] > r["ld3"]["fd_exact"] for r in with_fd) if with_fd else "-"
        times = [_time_ratio(r) for r in recs]
        overrides = " ".join(sorted({o for r in recs for o in r.get("extra", [])
                                     if not o.startswith(("cache_dir=", "model.path="))})) or "-"
        out.append(f"| {name} | {overrides} | {len(recs)} | {_gmean(list(ratio.values())):.3f} | "
                   f"{ratio[worst]:.3f} ({worst}) | {sum(x > 1.02 for x in ratio.values())} | {val:.3f} | "
                   f"{fd} | {min(times):.2f}-{max(times):.2f}x |")
    return "\n".join(out)


def _read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Overrides after -- go to every run.")
    ap.add_argument("model", nargs="?", default="mnist_gmm")
    ap.add_argument("--solvers", default="dpmpp:2,unipc:3,ipndm:3", help="solver:order list")
    ap.add_argument("--nfe", default="3,4,5,6")
    ap.add_argument("--pairs", type=int, default=1000, help="teacher pairs (half validate)")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out noises")
    ap.add_argument("--out", default="learned_solver_grid.jsonl")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once, each in its own process")
    ap.add_argument("--no-alone", dest="alone", action="store_false",
                    help="skip the learned solver alone (the coefficients-only run): LD3 and + steps only")
    ap.add_argument("--render", metavar="JSONL", help="print the tables of a finished grid and exit")
    ap.add_argument("--summary", metavar="JSONL", nargs="+",
                    help="print one summary row per finished grid (e.g. one per train.seed) and exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.render:
        print(render(_read(args.render)))
        return 0
    if args.summary:
        print(summary({Path(p).name: _read(p) for p in args.summary}))
        return 0
    torch.set_num_threads(1)
    cells = [(solver, int(order or 3), int(nfe)) for nfe in args.nfe.split(",")
             for solver, _, order in (item.partition(":") for item in args.solvers.split(","))]
    if args.jobs > 1 and len(cells) > 1:
        return run_parallel(args, cells, extra)
    for solver, order, nfe in cells:
        rec = cell(args.model, solver, order, nfe, args.pairs, args.heldout, extra, args.alone)
        with open(args.out, "a") as f:  # one line per cell: appends from parallel jobs do not interleave
            f.write(json.dumps(rec) + "\n")
        alone = f", learned solver {rec['learned']['rmse']:.4f}" if "learned" in rec else ""
        residual = f", + residual {rec['residual']['rmse']:.4f}" if "residual" in rec else ""
        print(f"{args.model} {solver}-{order} NFE {nfe}: LD3 {rec['ld3']['rmse']:.4f}, learned solver + steps "
              f"{rec['learned_steps']['rmse']:.4f}{alone}{residual}; training {rec['time']['ld3_wall']:.1f} s (LD3) / "
              f"{rec['time']['wall']:.1f} s (whole run)", flush=True)
    return 0


def run_parallel(args, cells: list[tuple], extra: list[str]) -> int:
    """Each cell in its own process, ``--jobs`` at a time (a GPU runs many small solvers at once far better
    than one after another); the teacher pairs are made first, once, so the jobs only read them."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from ld3_cli.stages.artifacts import teacher_artifact

    solver, order, nfe = cells[0]
    ctx = context(args.model, solver, order, nfe, args.pairs, extra)
    teacher_artifact(ctx)
    teacher_artifact(ctx, seed_start=int(ctx.cfg.sample.seed_offset), n=args.heldout)

    def one(c):
        cmd = [sys.executable, __file__, args.model, "--solvers", f"{c[0]}:{c[1]}", "--nfe", str(c[2]),
               "--pairs", str(args.pairs), "--heldout", str(args.heldout), "--out", args.out,
               *([] if args.alone else ["--no-alone"]), "--", *extra]
        return subprocess.run(cmd).returncode

    with ThreadPoolExecutor(args.jobs) as pool:
        codes = list(pool.map(one, cells))
    failed = [c for c, rc in zip(cells, codes) if rc]
    if failed:
        print(f"{len(failed)} cell(s) failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
