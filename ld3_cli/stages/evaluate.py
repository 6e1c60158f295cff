"""``ld3 eval`` (alias ``evaluate-fid``): score the learned schedule and the baselines, one table.

Every schedule in ``eval.compare`` is sampled when needed and scored (:mod:`ld3_cli.stages.evaluation`:
FID or pixel Frechet distances, and teacher distances on held-out noises); the table is printed and
its rows appended to ``<cache>/results.csv``.
"""
from __future__ import annotations

from .artifacts import learned_schedule
from .context import StageContext
from .evaluation import check_inputs, evaluate


def run(ctx: StageContext) -> list[dict]:
    """Stage entry point: evaluate every schedule in ``eval.compare`` for this solver and NFE.

    A missing learned schedule is reported first, before the model is loaded (or fitted) for anything.
    """
    if "ld3" in list(ctx.cfg.eval.compare):
        learned_schedule(ctx)
    check_inputs(ctx)
    return evaluate(ctx)
