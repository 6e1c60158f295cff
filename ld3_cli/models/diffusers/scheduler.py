"""A diffusers scheduler config -> the model's noise schedule, prediction type and time input.

Beta-based schedulers (``beta_schedule`` linear / scaled_linear / squaredcos_cap_v2 or
``trained_betas``, ``num_train_timesteps``, ``rescale_betas_zero_snr``) give
:class:`~ld3_cli.schedules.noise.VPDiscrete` (the betas are those of
:func:`~ld3_cli.schedules.noise.make_betas`); ``FlowMatch*`` schedulers give
:class:`~ld3_cli.schedules.noise.FlowMatching`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import ConfigError, MissingFileError
from ...schedules.noise import BETA_SCHEDULES, FlowMatching, NoiseSchedule, VPDiscrete, make_betas, zero_terminal_snr
from .locate import read_json

PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}


def read_scheduler_config(root: Path, overrides: dict | None = None) -> dict:
    """``scheduler/scheduler_config.json`` (or the flat ``scheduler_config.json``) updated by ``overrides``."""
    found = {}
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            found = read_json(p)
            break
    out = {**found, **dict(overrides or {})}
    if not out:
        raise MissingFileError(f"no scheduler config in {root} (looked for scheduler/scheduler_config.json and "
                               "scheduler_config.json); add it, or give the schedule as model.scheduler: "
                               "{beta_schedule: ..., beta_start: ..., beta_end: ..., num_train_timesteps: ...}")
    return out


def _num_train_timesteps(sc: dict) -> int:
    return int(sc.get("num_train_timesteps", sc.get("timesteps", 1000)))


def alphas_cumprod_from_config(sc: dict) -> torch.Tensor:
    """float64 ``alphas_cumprod[0..N-1]`` of a beta-based diffusers scheduler config."""
    n = _num_train_timesteps(sc)
    if sc.get("trained_betas") is not None:
        betas = torch.as_tensor(sc["trained_betas"], dtype=torch.float64)
    else:
        kind = sc.get("beta_schedule", "linear")
        if kind not in BETA_SCHEDULES:
            raise ConfigError(f"scheduler beta_schedule '{kind}' is not supported; use {', '.join(BETA_SCHEDULES)} "
                              "or give trained_betas in model.scheduler")
        betas = make_betas(kind, n, float(sc.get("beta_start", 1e-4)), float(sc.get("beta_end", 2e-2)))
    ac = torch.cumprod(1.0 - betas, dim=0)
    return zero_terminal_snr(ac) if sc.get("rescale_betas_zero_snr") else ac


def schedule_from_scheduler_config(sc: dict, cfg: dict | None = None) -> tuple[NoiseSchedule, str, str, float]:
    """-> ``(schedule, prediction, time_input, time_scale)`` for :class:`NetworkDenoiser`.

    ``cfg`` may set ``first_step`` (VP), ``sigma_min`` / ``sigma_max`` (flow) and ``prediction``
    (ld3 names eps / v / x0 / flow, overriding the scheduler's ``prediction_type``).
    """
    cfg = cfg or {}
    cls = str(sc.get("_class_name", ""))
    n = _num_train_timesteps(sc)
    if cls.startswith("EDM"):
        raise ConfigError(f"scheduler {cls} describes an EDM-parameterised model; load it with model.kind=edm")
    if "FlowMatch" in cls or sc.get("prediction_type") == "flow_prediction":
        shift = 1.0 if sc.get("use_dynamic_shifting") else float(sc.get("shift", 1.0))
        s = 1.0 / n
        t_min = shift * s / (1 + (shift - 1) * s)
        if cfg.get("sigma_min") is not None:
            t_min = float(cfg["sigma_min"]) / (1 + float(cfg["sigma_min"]))
        sig_max = float(cfg.get("sigma_max", 80.0))
        schedule: NoiseSchedule = FlowMatching(t_min=t_min, t_max=sig_max / (1 + sig_max))
        prediction = "flow"
        time_input, time_scale = ("t*1000", 1.0) if n == 1000 else ("t/T", 1.0 / n)
    else:
        schedule = VPDiscrete(alphas_cumprod_from_config(sc), first_step=int(cfg.get("first_step", 0)))
        ptype = sc.get("prediction_type", "epsilon")
        if ptype not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type '{ptype}' is unknown; "
                              f"expected one of {sorted(PREDICTION_TYPES)}")
        prediction = PREDICTION_TYPES[ptype]
        time_input, time_scale = "t", 1.0
    if cfg.get("prediction"):
        prediction = str(cfg["prediction"])
    return schedule, prediction, time_input, time_scale

