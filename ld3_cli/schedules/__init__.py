"""Noise schedules (native time <-> sigma) and baseline discretizations (sigma lists)."""
from .discretize import NEEDS_MODEL, available, check_sigmas, discretize, register
from .noise import (EDM, SCHEDULE_KINDS, FlowMatching, NoiseSchedule, VPCosine, VPDiscrete, VPLinear,
                    build_noise_schedule, log_snr, sigma_from_log_snr)

__all__ = ["EDM", "FlowMatching", "NoiseSchedule", "VPCosine", "VPDiscrete", "VPLinear", "SCHEDULE_KINDS",
           "build_noise_schedule", "log_snr", "sigma_from_log_snr", "discretize", "available", "register",
           "check_sigmas", "NEEDS_MODEL"]
