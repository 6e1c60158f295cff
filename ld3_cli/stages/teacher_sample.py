"""``ld3 teacher-sample``: the training pairs (noise, teacher output) every schedule learns from.

Sample i uses seed ``seed + i`` (eval's held-out pairs use ``sample.seed_offset + i``), so any
subset can be regenerated.  The teacher is a many-step solve (config group ``teacher``: solver,
NFE, discretization); an interrupted run resumes.  What the artifact holds:
:mod:`ld3_cli.stages.teacher_pairs`.
"""
from __future__ import annotations

from ..store import Artifact
from .artifacts import teacher_artifact
from .context import StageContext


def run(ctx: StageContext) -> Artifact:
    """Stage entry point: the training teacher pairs for the current config."""
    art = teacher_artifact(ctx)
    print(f"teacher samples: {art.path}")
    return art
