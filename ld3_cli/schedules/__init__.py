"""Noise schedules (native time <-> sigma) and the closed-form baseline discretizations (sigma lists).

The searched baselines (GITS, DMN) run solvers, so they live in :mod:`ld3_cli.search`.
"""
from .discretize import available, check_sigmas, discretize, register, register_lazy
from .noise import (EDM, SCHEDULE_KINDS, FlowMatching, NoiseSchedule, VPCosine, VPDiscrete, VPLinear,
                    build_noise_schedule, log_snr, sigma_from_log_snr)

__all__ = ["EDM", "FlowMatching", "NoiseSchedule", "VPCosine", "VPDiscrete", "VPLinear", "SCHEDULE_KINDS",
           "build_noise_schedule", "log_snr", "sigma_from_log_snr", "discretize", "available", "register",
           "register_lazy", "check_sigmas"]
