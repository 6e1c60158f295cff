"""Restarts (``train.restarts``): LD3's phases run several times, and the run with the best validation goes on.

LD3's result depends on the order in which it meets its training pairs: on the MNIST DDPM the held-out error of
six batch orders spreads by 5 to 42 % per cell, and the validation loss ranks them as the held-out error does
(docs/reproduction.md, "Restarts").  Restart ``k`` is the run of ``train.seed = restart_seed(seed, k)`` (restart 0
is the plain run, bit for bit) on the same training / validation split; each runs LD3's phases
(:meth:`~ld3_cli.ld3.trainer.LD3Trainer.run_schedule_phases`), and the one with the lowest validation loss (the
first on a tie) is kept and finishes the run (phase 3, when coefficients are learned).  The cost is ``restarts``
times LD3's.  A run that learns the coefficients alone has nothing to restart and runs once.
"""
from __future__ import annotations

from typing import Callable

from .options import TrainOptions
from .phases import schedule_phase_count

# the seeds of restarts 1, 2, ... are this far apart, so that no two users' seeds share a restart
RESTART_SEED_STRIDE = 1_000_003


def restart_seed(seed: int, k: int) -> int:
    """The batch-order seed of restart ``k`` of a run seeded ``seed`` (``seed`` itself for ``k = 0``)."""
    return int(seed) + RESTART_SEED_STRIDE * int(k)


def _schedule_phases(k: int, trainer) -> dict:
    return trainer.run_schedule_phases()


def best_restart(options: TrainOptions, build: Callable, schedule_phases: Callable = _schedule_phases) -> tuple:
    """Run every restart's LD3 phases and keep the best: ``(trainer, record)``.

    Args:
        options: the run's options (``restarts`` of them; each restart gets its own ``seed``).
        build: ``build(k, options_k)`` -> the :class:`~ld3_cli.ld3.trainer.LD3Trainer` of restart ``k`` (restored
            from a saved state, when the caller keeps one).
        schedule_phases: ``schedule_phases(k, trainer)`` trains its LD3 phases and returns what
            ``trainer.run_schedule_phases`` does (default: that call alone; a caller adds its checkpointing here).

    Returns:
        the kept trainer (``trainer.run()`` finishes it) and one dict per restart: ``seed``, ``best_val``,
        ``iterations``, ``seconds`` (of LD3's phases) and ``kept``.  Only the kept trainer stays in memory.
    """
    kept, record = None, []
    for k in range(int(options.restarts)):
        seed = restart_seed(options.seed, k)
        trainer = build(k, options if seed == options.seed else options.replace(seed=seed))  # restart 0: as given
        done = schedule_phases(k, trainer)
        record.append({"seed": int(trainer.options.seed), **done, "kept": False})
        if kept is None or done["best_val"] < record[kept[1]]["best_val"]:
            kept = (trainer, k)
        if not schedule_phase_count(trainer.phases):  # learn has neither steps nor offsets: nothing to restart
            break
    record[kept[1]]["kept"] = True
    return kept[0], record
