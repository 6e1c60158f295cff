"""PNG figures: schedules (log-SNR vs step), training curves, image grids.  Matplotlib (Agg), bytes out."""
from __future__ import annotations

import io
import math

import numpy as np


def _fig_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def lambda_plot_axes(ax, schedules: dict, highlight: str = "ld3") -> None:
    """Plot log-SNR (-log sigma) against step index for ``{name: sigmas}``."""
    for name, sig in schedules.items():
        lam = -np.log(np.asarray(sig, dtype=np.float64))
        style = dict(lw=2.5, marker="o", zorder=5) if name == highlight else dict(lw=1.2, marker=".", alpha=0.8)
        ax.plot(np.arange(len(lam)), lam, label=name, **style)
    ax.set_xlabel("step i")
    ax.set_ylabel("log-SNR  -log(sigma_i)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def coefficients_axes(ax, learned, base) -> None:
    """A learned solver's history weights against the base solver's on the same grid, per step.

    ``learned`` / ``base``: :class:`~ld3_cli.solvers.multistep.MultistepCoefficients`; each weight is shown
    relative to its step's lead weight ``b_i`` (what the corrections are learned in): ``P[i, j] / b_i`` on the
    difference ``F_(i-j-1) - F_i``, solid for the learned solver, dashed for the base one.
    """
    k = learned.pred.shape[1]
    bp = np.zeros((base.steps, k))
    bp[:, :base.pred.shape[1]] = np.asarray(base.pred.tolist()).reshape(base.steps, -1)
    lp, b = np.asarray(learned.pred.tolist()).reshape(learned.steps, -1), np.asarray(base.b.tolist())
    for j in range(k):
        steps = [i for i in range(learned.steps) if j < i]
        if not steps:
            continue
        line, = ax.plot(steps, lp[steps, j] / b[steps], "o-", label=f"learned: F(i-{j + 1}) - F(i)")
        ax.plot(steps, bp[steps, j] / b[steps], "x--", color=line.get_color(), alpha=0.7)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("step i")
    ax.set_ylabel("history weight / b_i  (dashed: base solver)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def schedule_plot(result, baselines: dict, noise_schedule=None, base_table=None) -> bytes:
    """(a) log-SNR vs step for the learned (and its evaluation times) and baseline schedules; (b) validation loss;
    (c) with learned coefficients, their history weights against ``base_table`` (the solver's own)."""
    plt = _plt()
    learned = getattr(getattr(result, "sampler", None), "coefficients", None)
    panels = 3 if learned is not None and base_table is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    a, b = axes[0], axes[1]
    if panels == 3:
        coefficients_axes(axes[2], learned, base_table)
        axes[2].set_title("learned solver coefficients")
    sched = {name: v["sigmas"] for name, v in baselines.items() if "sigmas" in v}
    sched["ld3"] = result.sigmas.tolist()
    lambda_plot_axes(a, sched)
    ev = np.asarray(result.sigmas_eval.tolist())
    if not np.allclose(ev, np.asarray(result.sigmas.tolist())):
        a.plot(np.arange(len(ev)), -np.log(ev), "x", color="k", label="ld3 eval times", zorder=6)
        a.legend(fontsize=8)
    a.set_title(f"{result.solver} NFE {result.nfe}: schedules")
    its = [r["iteration"] for r in result.history if "val" in r]
    vals = [r["val"] for r in result.history if "val" in r]
    if its:
        b.plot([0] + its, [result.init_val] + vals, label="validation")
        b.axhline(result.best_val, color="g", ls="--", lw=1, label=f"best {result.best_val:.4g}")
        for name, v in baselines.items():
            b.axhline(v["val"], ls=":", lw=1, color="gray")
            b.annotate(name, (0, v["val"]), fontsize=7, color="gray")
        b.set_yscale("log")
    b.set_xlabel("iteration")
    b.set_ylabel(f"validation loss ({result.loss})")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    return _fig_bytes(fig)


def schedules_plot(schedules: dict, title: str, tables=None) -> bytes:
    """log-SNR vs step of every schedule; with ``tables = (learned, base)``, the learned coefficients beside it."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if tables else 1, figsize=(12 if tables else 6.5, 4))
    ax = axes[0] if tables else axes
    lambda_plot_axes(ax, schedules)
    ax.set_title(title)
    if tables:
        coefficients_axes(axes[1], *tables)
        axes[1].set_title("ld3: learned solver coefficients")
    return _fig_bytes(fig)


def image_grid(images_uint8: np.ndarray, cols: int | None = None) -> bytes:
    """PNG of a grid of ``[n, H, W, C]`` uint8 images."""
    from PIL import Image

    n, h, w, c = images_uint8.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = images_uint8[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if h < 64:  # small images (MNIST, CIFAR): enlarge so the grid is readable
        f = 64 // h
        img = img.resize((img.width * f, img.height * f), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def metric_vs_nfe_plot(rows: list[dict], metric: str, title: str) -> bytes:
    """``metric`` against NFE: one panel per solver, one line per schedule (same colour in every panel).

    The learned schedule (``ld3``) is drawn thick and black; the y axis is logarithmic and shared.
    """
    plt = _plt()
    series: dict = {}
    for r in rows:
        if r["metric"] == metric:
            series.setdefault(r["solver"], {}).setdefault(r["schedule"], []).append((int(r["nfe"]), float(r["value"])))
    solvers = list(series) or [""]  # in the order the rows name them
    schedules = sorted({s for per in series.values() for s in per}, key=lambda s: (s != "ld3", s))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {s: "black" if s == "ld3" else palette[i % len(palette)] for i, s in enumerate(schedules)}
    fig, axes = plt.subplots(1, len(solvers), figsize=(3.2 * len(solvers) + 1.6, 3.6), sharey=True, squeeze=False)
    for ax, solver in zip(axes[0], solvers):
        for sched in schedules:
            pts = sorted(series.get(solver, {}).get(sched, []))
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[sched],
                        lw=2.5 if sched == "ld3" else 1.2, label=sched)
        nfes = sorted({p[0] for per in series.get(solver, {}).values() for p in per})
        ax.set_xticks(nfes)
        ax.set_xlabel("NFE")
        ax.set_title(solver, fontsize=10)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    return _fig_bytes(fig)
