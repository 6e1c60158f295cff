"""LD3: learn a solver's time steps (and decoupled evaluation times) from teacher pairs."""
from .. import search  # noqa: F401 - registers the searched baselines (gits, dmn): train.init may name them
from .parameterization import ScheduleParameterization
from .trainer import LD3Trainer, LearnedSchedule, TrainOptions, learn_schedule

__all__ = ["LD3Trainer", "LearnedSchedule", "ScheduleParameterization", "TrainOptions", "learn_schedule"]
