"""LD3: learn a solver's time steps (and decoupled evaluation times, and its coefficients) from teacher pairs."""
from .. import search  # noqa: F401 - registers the searched baselines (gits, dmn): train.init may name them
from .coefficients import CoefficientParameterization
from .options import TrainOptions
from .parameterization import ScheduleParameterization
from .result import LearnedSchedule
from .trainer import LD3Trainer, learn_schedule

__all__ = ["CoefficientParameterization", "LD3Trainer", "LearnedSchedule", "ScheduleParameterization", "TrainOptions",
           "learn_schedule"]
