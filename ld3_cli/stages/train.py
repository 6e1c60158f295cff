"""``ld3 train`` (alias ``train-discretization``): learn the LD3 schedule for the current solver and NFE.

Reads the teacher pairs from the store (``ld3 teacher-sample`` makes them); training resumes where
an interrupted run stopped.  What the artifact holds: :mod:`ld3_cli.stages.training`.
"""
from __future__ import annotations

from ..store import Artifact
from .context import StageContext
from .training import report, train_schedule


def run(ctx: StageContext) -> Artifact:
    """Stage entry point."""
    art = train_schedule(ctx)
    report(art)
    return art
