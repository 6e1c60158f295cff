"""LD3: learn a solver's time steps (and decoupled evaluation times, and its coefficients) from teacher pairs."""
from .coefficients import CoefficientParameterization
from .parameterization import ScheduleParameterization
from .options import TrainOptions
from .result import LearnedSchedule
from .trainer import LD3Trainer, learn_schedule

__all__ = ["CoefficientParameterization", "LD3Trainer", "LearnedSchedule", "ScheduleParameterization", "TrainOptions",
           "learn_schedule"]
