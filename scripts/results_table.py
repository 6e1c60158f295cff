"""Render <cache>/results.csv as the paper-style table: rows solver x schedule, columns NFE.

    python scripts/results_table.py --cache ld3-cache --model edm-cifar10 --published cifar10 \\
        --default-schedule edm --out table.md --plot table.png

``ld3 eval`` appends one row per (model, dataset, solver, NFE, schedule, metric) to
``<cache>/results.csv``; a rerun appends again, and the newest row wins here.  With
``--published KEY`` the FIDs of the LD3 paper (ld3_cli/data/published_fid.csv, rows with
``dataset == KEY``) sit beside the measured ones as ``measured / published``:

* ``<solver>, default`` (the paper's baseline discretization) beside the measured row of
  ``--default-schedule`` (which our schedule plays that role is a choice: see docs/reproduction.md);
* ``<solver>, gits`` / ``dmn`` beside the measured gits / dmn rows;
* ``best_ld3`` beside a row "best ld3" = the lowest measured ld3 value over the solvers at that NFE.

Published numbers whose measured row is absent still get a row (``- / published``).  The PNG
plots the metric against NFE, one line per (solver, schedule) (``utils.plots.metric_vs_nfe_plot``).
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Iterable, Optional

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "ld3_cli" / "data" / "published_fid.csv"
SOLVER_ORDER = ("dpmpp", "unipc", "ipndm", "deis", "euler", "heun")
HIGHER_IS_BETTER = {"psnr"}
TEACHER_METRICS = {"rmse", "psnr", "lpips"}
# published method name -> our solver name
METHOD_SOLVER = {"dpmpp3m": "dpmpp", "unipc3m": "unipc", "ipndm3m": "ipndm", "dpmpp": "dpmpp", "unipc": "unipc",
                 "ipndm": "ipndm"}
BEST = "best ld3"


# -- reading ------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file whose comment lines start with '#'."""
    text = "".join(ln for ln in Path(path).read_text().splitlines(keepends=True) if not ln.lstrip().startswith("#"))
    return list(csv.DictReader(io.StringIO(text)))


def latest(rows: Iterable[dict], model: Optional[str] = None, dataset: Optional[str] = None) -> dict:
    """``{(solver, schedule, nfe, metric): value}``, the last row of the file winning.

    A solver that appears with several orders is split into one row label per order,
    ``"dpmpp (order 2)"``, ``"dpmpp (order 3)"``; with one order it is just ``"dpmpp"``.
    """
    rows = [r for r in rows if (not model or r.get("model") == model) and (not dataset or r.get("dataset") == dataset)]
    orders: dict = {}
    for r in rows:
        orders.setdefault(r.get("solver"), set()).add(r.get("order"))
    out: dict = {}
    for r in rows:
        try:
            solver = r["solver"]
            label = solver if len(orders[solver]) == 1 else f"{solver} (order {r['order']})"
            out[(label, r["schedule"], int(r["nfe"]), r["metric"])] = float(r["value"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def base_solver(label: str) -> str:
    """``"dpmpp (order 2)"`` -> ``"dpmpp"``."""
    return label.split(" (order ")[0]


def published_cells(rows: Iterable[dict], key: str, default_schedule: Optional[str]) -> dict:
    """``{(solver, schedule, nfe): fid}`` for the published rows of dataset ``key`` (best LD3 under ``BEST``)."""
    out: dict = {}
    for r in rows:
        if r["dataset"] != key:
            continue
        nfe, fid = int(r["nfe"]), float(r["fid"])
        if r["method"] == "best_ld3":
            out[(BEST, "ld3", nfe)] = fid
            continue
        solver = METHOD_SOLVER.get(r["method"])
        if solver is None:
            continue
        schedule = r["schedule"]
        if schedule == "default":
            schedule = default_schedule or "default (paper)"
        out[(solver, schedule, nfe)] = fid
    return out


def pick_metric(values: dict) -> str:
    """The headline metric present in the results: fid, else fd_exact, else fd_data, else rmse."""
    have = {k[3] for k in values}
    for m in ("fid", "fd_exact", "fd_data", "rmse"):
        if m in have:
            return m
    raise SystemExit("no metrics in the results for this selection; run `ld3 eval` first")


# -- rendering ----------------------------------------------------------------------------------
def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def _solver_key(s: str) -> tuple:
    base = base_solver(s)
    return (SOLVER_ORDER.index(base) if base in SOLVER_ORDER else len(SOLVER_ORDER), s)


def table(values: dict, metric: str, published: Optional[dict] = None, nfes: Optional[list[int]] = None,
          solvers: Optional[list[str]] = None) -> str:
    """Markdown table of ``metric``: rows (solver, schedule), columns NFE, best measured value per column in bold.

    ``values``: from :func:`latest`; ``published``: from :func:`published_cells` (cells then read
    ``measured / published`` wherever a published number exists).
    """
    published = published or {}
    best = max if metric in HIGHER_IS_BETTER else min

    def wanted(s: str) -> bool:
        return not solvers or s in solvers or base_solver(s) in solvers

    cells = {(s, k, n): v for (s, k, n, m), v in values.items() if m == metric and wanted(s)}
    ld3_rows: dict = {}
    for (_s, k, n), v in cells.items():
        if k == "ld3":
            ld3_rows.setdefault(n, []).append(v)
    if published:
        for n, vs in ld3_rows.items():
            cells[(BEST, "ld3", n)] = best(vs)
    cols = sorted(set(nfes) if nfes else {n for (_, _, n) in cells} | {n for (_, _, n) in published})
    row_keys = {(s, k) for (s, k, _) in cells} | {(s, k) for (s, k, _) in published}
    order_seen = list(dict.fromkeys(k for (_, k, _, m) in values if m == metric))  # schedules, first seen first

    def sched_key(k: str) -> tuple:
        return (0 if k == "ld3" else 1, order_seen.index(k) if k in order_seen else len(order_seen), k)

    rows = sorted(row_keys, key=lambda sk: (1 if sk[0] == BEST else 0, _solver_key(sk[0]), sched_key(sk[1])))
    col_best: dict = {}  # NFE -> best measured value (the "best ld3" row is derived, not measured)
    for n in cols:
        measured = [cells[(s, k, n)] for (s, k) in rows if s != BEST and (s, k, n) in cells]
        if measured:
            col_best[n] = best(measured)
    head = ["solver", "schedule"] + [f"NFE {n}" for n in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (s, k) in rows:
        out = [s, k]
        for n in cols:
            v = cells.get((s, k, n))
            text = _fmt(v)
            if v is not None and s != BEST and col_best.get(n) == v:
                text = f"**{text}**"
            if (s, k, n) in published:
                text = f"{text} / {_fmt(published[(s, k, n)])}"
            out.append(text)
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


def plot_rows(values: dict, metric: str) -> list[dict]:
    """Rows in the shape :func:`ld3_cli.utils.plots.metric_vs_nfe_plot` takes."""
    return [{"solver": s, "schedule": k, "nfe": n, "metric": m, "value": v}
            for (s, k, n, m), v in sorted(values.items()) if m == metric]


def report(cache: Path, model: Optional[str] = None, dataset: Optional[str] = None,
           metrics: Optional[list[str]] = None, published_key: Optional[str] = None,
           default_schedule: Optional[str] = None, title: Optional[str] = None, nfes: Optional[list[int]] = None,
           solvers: Optional[list[str]] = None, plot: Optional[Path] = None) -> str:
    """The markdown report for one model of ``<cache>/results.csv`` (and the PNG when ``plot`` is given)."""
    path = Path(cache) / "results.csv"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; run `ld3 eval` (or scripts/repro.py) first")
    rows = read_csv(path)
    if model is None:
        models = sorted({r["model"] for r in rows})
        if len(models) != 1:
            raise SystemExit(f"{path} holds several models ({', '.join(models)}); choose one with --model")
        model = models[0]
    values = latest(rows, model, dataset)
    if not values:
        raise SystemExit(f"no results for model {model}" + (f" / dataset {dataset}" if dataset else "") + f" in {path}")
    metrics = metrics or [pick_metric(values)]
    pub = published_cells(read_csv(PUBLISHED), published_key, default_schedule) if published_key else None
    mine = [r for r in rows if r.get("model") == model]
    n_by_metric = {r["metric"]: r.get("n") for r in mine}
    dates = sorted(r["date"] for r in mine if r.get("date"))
    out = [f"### {title or model}", ""]
    for metric in metrics:
        use_pub = pub if (pub and metric == "fid") else None
        if metric in TEACHER_METRICS:
            note = f"`{metric}` to the teacher on held-out noises"
        else:
            note = f"`{metric}`" + (f", n = {n_by_metric.get(metric)} samples" if n_by_metric.get(metric) else "")
        if use_pub:
            note += "; cells: measured / published (LD3 paper)"
        out += [f"{note}; lower is better" if metric not in HIGHER_IS_BETTER else f"{note}; higher is better", "",
                table(values, metric, use_pub, nfes, solvers), ""]
    if pub and default_schedule:
        out += [f"Published 'default' baselines are shown beside our `{default_schedule}` row.", ""]
    if dates:
        out += [f"Measured {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
                + f"; source: {path}.", ""]
    if plot is not None:
        from ld3_cli.store import atomic_write_bytes
        from ld3_cli.utils.plots import metric_vs_nfe_plot

        atomic_write_bytes(plot, metric_vs_nfe_plot(plot_rows(values, metrics[0]), metrics[0], title or model))
        out += [f"Plot: {plot}", ""]
    return "\n".join(out)


def _ints(text: Optional[str]) -> Optional[list[int]]:
    return [int(x) for x in text.split(",")] if text else None


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Render <cache>/results.csv as a solver x schedule by NFE table.")
    ap.add_argument("--cache", type=Path, default=Path("ld3-cache"), help="the store root (cache_dir)")
    ap.add_argument("--model", help="model name as in the results (model.name); needed when several are present")
    ap.add_argument("--dataset", help="dataset name filter")
    ap.add_argument("--metric", action="append", help="fid, fd_exact, fd_data, rmse, psnr, lpips (repeatable); "
                                                      "default: the headline metric present")
    ap.add_argument("--published", help="dataset key in published_fid.csv (cifar10, ffhq64, afhqv2_64, "
                                        "lsun_bedroom256, imagenet256)")
    ap.add_argument("--default-schedule", help="our schedule beside which the paper's 'default' baseline is shown")
    ap.add_argument("--nfe", help="comma-separated NFE columns (default: all present)")
    ap.add_argument("--solvers", help="comma-separated solvers (default: all present)")
    ap.add_argument("--title")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--plot", type=Path, help="write the metric-vs-NFE PNG here")
    args = ap.parse_args(argv)
    text = report(args.cache, args.model, args.dataset, args.metric, args.published, args.default_schedule,
                  args.title, _ints(args.nfe), args.solvers.split(",") if args.solvers else None, args.plot)
    print(text)
    if args.out:
        from ld3_cli.store import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
