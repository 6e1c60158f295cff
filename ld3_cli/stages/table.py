"""Every stage of ``ld3`` in one table: command word, module, config file, summary, aliases, own config section.

The CLI's dispatcher and help (:mod:`ld3_cli.cli.main`), the runner (which imports
``ld3_cli.stages.<module>`` and calls its ``run(ctx)``), the commands a stage names for another
stage's artifacts (:meth:`~ld3_cli.stages.context.StageContext.command`) and the config reference
generator all read this table.  Adding a stage is one row here plus ``configs/<config>.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Stage:
    name: str                       # the command word: ``ld3 <name>``
    module: str                     # ``ld3_cli.stages.<module>``, whose ``run(ctx)`` runs the stage
    config: str                     # ``configs/<config>.yaml``
    summary: str                    # one line for ``ld3 --help``
    aliases: tuple[str, ...] = ()   # other command words (those with a dash are listed in the help)
    section: Optional[str] = None   # the config section only this stage reads (dropped from other stages' commands)


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("teacher-sample", "teacher_sample", "teacher_sample", "draw training noises and run the many-step teacher",
          aliases=("teacher", "teacher_sample")),
    Stage("train", "train", "train", "learn the LD3 time discretization for a solver and NFE",
          aliases=("train-discretization",)),
    Stage("sample", "sample", "sample", "sample with a learned or baseline schedule into npz shards",
          aliases=("sample-student",)),
    Stage("eval", "evaluate", "eval", "evaluate schedules (FID / pixel Frechet distance / teacher distances)",
          aliases=("evaluate-fid",)),
    Stage("run", "run", "run", "teacher-sample, train, sample and eval in order (the embedded default demo)"),
    Stage("export", "export", "export", "write a schedule for diffusers, k-diffusion, ComfyUI or as JSON",
          section="export"),
    Stage("schedules", "schedules", "schedules", "print and plot every baseline schedule for this model, solver, NFE",
          section="schedules"),
    Stage("fid-ref", "fid_ref", "fid_ref", "compute FID reference statistics from images or a dataset",
          aliases=("fid_ref",), section="fid_ref"),
)}
ALIASES: dict[str, str] = {alias: s.name for s in STAGES.values() for alias in s.aliases}
STAGE_SECTIONS: frozenset[str] = frozenset(s.section for s in STAGES.values() if s.section)
