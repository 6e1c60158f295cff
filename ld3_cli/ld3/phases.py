"""The trainer's phases: which parameter groups move, for how long, and what the student runs meanwhile.

``train.learn`` (any subset of steps, offsets, coefficients, residual; residual only with coefficients) becomes:
``steps`` for ``iters_phase1``,
then ``steps + offsets`` for ``iters_phase2`` (LD3's two phases), then the coefficients jointly with the
rest for ``iters_phase3`` -- or, with ``alternate_rounds = k``, ``k`` rounds of coefficients alone then
time steps alone, ``iters_phase3 / (2k)`` iterations each (S4S-Alt); then, with ``residual`` in ``learn``, the
residual operator for ``iters_residual`` (phase 4; the student runs the learned table with the residual on top),
alone (everything before it frozen) or, with ``residual_joint > 0``, jointly with the groups learned before it (its
``rate_factor``: those start at their rates times ``residual_joint``).
"""
from __future__ import annotations

from dataclasses import dataclass

from .options import TrainOptions


@dataclass(frozen=True)
class Phase:
    """One training phase: which parameter groups move, for how many iterations, and what the student uses.
    ``groups[0]`` leads: its rate is the one the phase reports, decays on and ends at; the groups after it start at
    their options' rates times ``rate_factor``."""

    name: str
    groups: tuple
    budget: int
    decoupled: bool      # the student evaluates at the decoupled times
    coefficients: bool   # the student runs the learned coefficient table
    residual: bool = False  # the student runs the residual operator on its table
    rate_factor: float = 1.0


def plan_phases(o: TrainOptions) -> list[Phase]:
    """The phases ``train.learn`` asks for (module docstring)."""
    learn = set(o.learn)
    sched = tuple(g for g in ("steps", "offsets") if g in learn)
    phases = []
    if "steps" in learn:
        phases.append(Phase("steps", ("steps",), int(o.iters_phase1), False, False))
    if "offsets" in learn:
        phases.append(Phase("offsets", sched, int(o.iters_phase2), True, False))
    if "coefficients" in learn:
        dec = "offsets" in learn
        rounds = int(o.alternate_rounds)
        if rounds == 0 or not sched:
            phases.append(Phase("coefficients", ("coefficients", *sched), int(o.iters_phase3), dec, True))
        else:
            per = max(1, int(o.iters_phase3) // (2 * rounds))
            for r in range(1, rounds + 1):
                phases.append(Phase(f"coefficients-{r}", ("coefficients",), per, dec, True))
                phases.append(Phase(f"schedule-{r}", sched, per, dec, True))
    if "residual" in learn:
        joint = ("coefficients", *sched) if o.residual_joint > 0 else ()
        phases.append(Phase("residual", ("residual", *joint), int(o.iters_residual), "offsets" in learn, True, True,
                            float(o.residual_joint)))
    return [p for p in phases if p.budget > 0] or phases[:1]


def schedule_phase_count(phases: list[Phase]) -> int:
    """How many of ``phases`` come before the first that runs learned coefficients or the residual: LD3's own
    phases, the part that ``train.restarts`` repeats."""
    return next((i for i, p in enumerate(phases) if p.coefficients or p.residual), len(phases))
