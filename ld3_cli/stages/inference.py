"""The model through a solver, for the stages: the teacher on its own schedule, the student on a given one.

Both take seeds or unit noises (the solve starts at ``sigma_max * noise``; :mod:`ld3_cli.data.seeds`
turns seeds into noises and conditions) and run without gradients.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from ..data.seeds import seed_inputs
from ..schedules import discretize
from ..solvers import solve
from ..solvers.sampler import Sampler
from ..solvers.config import SolverSetup
from .context import StageContext


def teacher_sigmas(ctx: StageContext, nfe: Optional[int] = None) -> torch.Tensor:
    """The teacher's sigmas: ``teacher.discretization`` for ``teacher.solver`` at ``nfe`` (default teacher.nfe)."""
    return discretize(str(ctx.cfg.teacher.discretization), _teacher_solver(ctx, nfe).steps, ctx.model.schedule)


def _teacher_solver(ctx: StageContext, nfe: Optional[int]) -> SolverSetup:
    """The teacher's solver; at another ``nfe`` than teacher.nfe (GITS's fine grid) set up for that NFE."""
    setup = ctx.settings.teacher_solver
    if nfe is None or int(nfe) == setup.nfe:
        return setup
    return SolverSetup.from_config({"name": setup.name, **setup.options}, nfe, "teacher.solver")


def run_teacher(ctx: StageContext, noises: torch.Tensor, cond, nfe: Optional[int] = None) -> torch.Tensor:
    """Teacher final states for unit ``noises`` (no grad)."""
    setup = ctx.settings.teacher_solver
    sig = teacher_sigmas(ctx, nfe)
    with torch.no_grad():
        return solve(setup.name, ctx.model, noises * float(sig[0]), sig, cond=cond, **setup.options)


def teacher_images(ctx: StageContext, seeds: Iterable[int]) -> torch.Tensor:
    """Decoded teacher images ``[B, C, H, W]`` in [-1, 1] for these seeds."""
    noises, cond = seed_inputs(ctx.model, seeds, ctx.device)
    return ctx.model.decode(run_teacher(ctx, noises, cond))


def student_images(ctx: StageContext, seeds: Iterable[int], sampler: Sampler) -> torch.Tensor:
    """Decoded student images ``[B, C, H, W]`` in [-1, 1] for these seeds, run by ``sampler`` (no grad)."""
    model = ctx.model
    noises, cond = seed_inputs(model, seeds, ctx.device)
    with torch.no_grad():
        return model.decode(sampler.solve(model, noises * float(sampler.sigmas[0]), cond))
