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
from .checks import solver_options, steps_for
from .context import StageContext


def teacher_sigmas(ctx: StageContext, nfe: Optional[int] = None) -> torch.Tensor:
    """The teacher's sigmas: ``teacher.discretization`` for ``teacher.solver`` at ``nfe`` (default teacher.nfe)."""
    t = ctx.cfg.teacher
    steps = steps_for(t.solver, int(nfe or t.nfe))
    return discretize(str(t.discretization), steps, ctx.model.schedule)


def run_teacher(ctx: StageContext, noises: torch.Tensor, cond, nfe: Optional[int] = None) -> torch.Tensor:
    """Teacher final states for unit ``noises`` (no grad)."""
    t = ctx.cfg.teacher
    sig = teacher_sigmas(ctx, nfe)
    with torch.no_grad():
        return solve(str(t.solver.name), ctx.model, noises * float(sig[0]), sig, cond=cond, **solver_options(t.solver))


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
