"""``ld3 run``: teacher-sample -> train -> sample -> eval for the current config.

With no arguments this is the embedded-default demo (``make demo``): the MNIST-5k Gaussian
mixture, UniPC at NFE 5.  Every step reuses the store, so a second run recomputes nothing.  The
closing list names only artifacts this run made or found: the learned schedule's samples only when
``eval.compare`` includes ``ld3``.
"""
from __future__ import annotations

import logging
import time

from .artifacts import samples_artifact, teacher_artifact
from .context import StageContext
from .evaluation import check_inputs, evaluate
from .training import report, train_schedule

log = logging.getLogger("ld3")


def run(ctx: StageContext) -> list[dict]:
    """Stage entry point: the whole pipeline; returns the evaluation table."""
    t0 = time.perf_counter()
    check_inputs(ctx)  # a bad FID reference is reported before hours of teacher sampling and training
    teacher = teacher_artifact(ctx)
    print(f"[1/3] teacher samples: {teacher.path}")
    sched = train_schedule(ctx)
    report(sched)
    print(f"[2/3] learned schedule: {sched.path}")
    print("[3/3] sampling and evaluating", ", ".join(str(s) for s in ctx.cfg.eval.compare))
    table = evaluate(ctx)
    print()
    print("artifacts:")
    print(f"  teacher   {teacher.path}")
    print(f"  schedule  {sched.path / 'schedule.json'}")
    if (sched.path / "schedule.png").is_file():
        print(f"  plot      {sched.path / 'schedule.png'}")
    if "ld3" in [str(s) for s in ctx.cfg.eval.compare]:  # evaluate made them: this opens them, makes nothing
        samples = samples_artifact(ctx, "ld3").path
        pictures = [f for f in ("grid.png", "teacher_vs_student.png") if (samples / f).is_file()]
        print(f"  samples   {samples}" + (f" ({', '.join(pictures)})" if pictures else ""))
    print(f"  results   {ctx.store.root / 'results.csv'}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return table
