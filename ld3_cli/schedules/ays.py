"""Align Your Steps (AYS; Sabour et al., ICML 2024) schedules.

AYS published optimised 10-step schedules (11 EDM sigmas, noisiest first) for four model
families only: ``sd15``, ``sdxl``, ``deepfloyd_if_stage1`` and ``svd``.  The numbers live in
the package data file ``ld3_cli/data/ays_sigmas.json``.  For ``N != 10`` steps the list is
resampled the way the AYS how-to page does it: ``log sigma_k`` sits at ``x_k = k / 10``
(k = 0..10), the piecewise-linear interpolant is read at ``x'_j = j / N`` (j = 0..N) and
exponentiated.  Wherever ``x'_j`` falls on a node the published value is returned exactly, so
``N = 10`` gives the list itself and the endpoints are always the list's own: AYS defines
``sigma_max`` / ``sigma_min`` itself and ignores the model schedule's range.

There is no AYS list for EDM / LDM / other models; transplanting one across model families is
not meaningful, so those requests raise :class:`ConfigError`.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources

import torch

from ..errors import ConfigError
from .discretize import register

DATA_FILE = "ays_sigmas.json"
_ALIASES = {
    "sd1.5": "sd15", "sd-1.5": "sd15", "sd_1_5": "sd15", "sd1_5": "sd15", "sd_v1_5": "sd15",
    "stable_diffusion_v1_5": "sd15", "sd_xl": "sdxl", "stable_diffusion_xl": "sdxl",
    "deepfloyd_if": "deepfloyd_if_stage1", "if_stage1": "deepfloyd_if_stage1", "deepfloyd": "deepfloyd_if_stage1",
    "stable_video_diffusion": "svd",
}


@lru_cache(maxsize=1)
def ays_tables() -> dict[str, tuple[float, ...]]:
    """The published 10-step lists, ``{family: (sigma_0, ..., sigma_10)}`` (decreasing)."""
    text = resources.files("ld3_cli.data").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return {k: tuple(float(v) for v in vals) for k, vals in json.loads(text)["sigmas"].items()}


def families() -> list[str]:
    return sorted(ays_tables())


def _family_key(model_family) -> str | None:
    if model_family is None:
        return None
    key = str(model_family).strip().lower()
    return _ALIASES.get(key, key)


def loglinear_resample(values, n_steps: int) -> list[float]:
    """Resample a decreasing list of ``L + 1`` sigmas to ``n_steps + 1`` by log-linear interpolation.

    Position ``j / n_steps`` of the new list reads the interpolant of ``log values`` placed at
    ``k / L``; points that coincide with a node return that node's value bit-exactly.
    """
    vals = [float(v) for v in values]
    n_in = len(vals) - 1
    if n_in < 1 or n_steps < 1:
        raise ConfigError(f"log-linear resampling needs >= 2 input values and >= 1 step, got {len(vals)}, {n_steps}")
    out = []
    for j in range(n_steps + 1):
        k, rem = divmod(j * n_in, n_steps)  # position j * n_in / n_steps on the input index axis
        if rem == 0:
            out.append(vals[k])
            continue
        f = rem / n_steps
        out.append(math.exp((1.0 - f) * math.log(vals[k]) + f * math.log(vals[k + 1])))
    return out


@register("ays")
def ays(n_steps, schedule=None, model_family=None, **_):
    """AYS schedule for ``model_family`` with ``n_steps`` steps (float64 tensor of ``n_steps + 1`` sigmas).

    ``schedule`` and any ``sigma_min`` / ``sigma_max`` options are ignored: the published list
    fixes both endpoints.
    """
    tables = ays_tables()
    key = _family_key(model_family)
    if key not in tables:
        what = "no model_family was given" if key is None else f"there is no AYS list for model_family '{model_family}'"
        raise ConfigError(f"AYS schedules exist only for the model families {sorted(tables)} and {what}; "
                          "pass the option model_family=<one of them>, or pick another discretization "
                          "(AYS is N/A for EDM, LDM and other models: a published list must not be transplanted "
                          "to another model)")
    return torch.tensor(loglinear_resample(tables[key], int(n_steps)), dtype=torch.float64)
