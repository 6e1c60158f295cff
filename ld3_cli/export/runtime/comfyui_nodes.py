"""ComfyUI node pack for ld3 schedules: the node "LD3 Sampler" gives the SAMPLER and SIGMAS of a learned schedule.

``ld3 export`` writes this file as ``comfyui_ld3/__init__.py``, with ``ld3_sampler.py``, ``ld3_kdiffusion.py`` and
``schedules/<name>.json`` beside it.  Copy the folder into ``ComfyUI/custom_nodes/`` (more exports: copy their
``schedule.json`` into ``comfyui_ld3/schedules/`` under any name) and restart ComfyUI.  Then:

    LD3 Sampler (schedule) --SAMPLER--> SamplerCustom / SamplerCustomAdvanced
                           --SIGMAS---> the same node's sigmas input

The sampler runs exactly what ld3 learned (decoupled evaluation times and scales, a learned solver's
coefficients) through k-diffusion's sampler signature, the way ComfyUI runs its own samplers: a function
``(model, x, sigmas, extra_args, callback, disable)`` wrapped in ``comfy.samplers.KSAMPLER``.  Two ComfyUI
conventions are handled: ``KSAMPLER`` starts from ``noise * sqrt(1 + sigma^2)`` when the list starts at the
model's ``sigma_max`` ("max_denoise"); this sampler starts from ``noise * sigmas[0]`` as ld3 does.  For
discrete-time models (SD 1.x/2.x, SDXL) ComfyUI rounds the network's time to the nearest training step; a
schedule trained with ``model.time_rounding=nearest`` runs exactly, any other slightly differently (the node
logs a warning).  Facts from ComfyUI's comfy/samplers.py and comfy/model_sampling.py (docs/export.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import ld3_kdiffusion, ld3_sampler

SCHEDULES = Path(__file__).resolve().parent / "schedules"
log = logging.getLogger(__name__)


def schedule_names() -> list:
    """The schedules this pack offers: ``schedules/*.json`` (file names without the extension)."""
    return sorted(p.stem for p in SCHEDULES.glob("*.json")) if SCHEDULES.is_dir() else []


def load(name: str) -> dict:
    """The record of schedule ``name`` (a file in ``schedules/``)."""
    path = SCHEDULES / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no ld3 schedule {name!r} in {SCHEDULES}; copy an export's schedule.json there")
    record = json.loads(path.read_text())
    ld3_sampler.check_record(record, str(path))
    kind = (record.get("noise_schedule") or {}).get("kind")
    if kind == "flow":
        raise ValueError(f"ld3 schedule {name!r} is for a flow-matching model, whose sigma in ComfyUI is the flow time "
                         "t (ModelSamplingDiscreteFlow); this node runs EDM-sigma schedules (EDM and DDPM-type "
                         "models). Use comfyui_sigmas.txt with a stock sampler, or ld3_diffusers.LD3Scheduler")
    net = record.get("network") or {}
    if kind == "vp_discrete" and net.get("time_rounding") != "nearest":
        log.warning("ld3 schedule %s was trained on the exact network time; ComfyUI rounds it to the nearest "
                    "training step for this model, so results differ slightly from ld3's (train with "
                    "model.time_rounding=nearest to match exactly)", name)
    return record


def sampler_object(sample_function):
    """``comfy.samplers.KSAMPLER`` around a k-diffusion-signature function, starting at ``noise * sigmas[0]``."""
    import comfy.samplers

    class LD3KSampler(comfy.samplers.KSAMPLER):
        def max_denoise(self, model_wrap, sigmas):
            return False  # ld3 starts from sigmas[0] * noise, never from sqrt(1 + sigma^2) * noise

    return LD3KSampler(sample_function)


class LD3Sampler:
    """SAMPLER + SIGMAS of one ld3 schedule (see the module docstring)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"schedule": (schedule_names(),)}}

    RETURN_TYPES = ("SAMPLER", "SIGMAS")
    RETURN_NAMES = ("sampler", "sigmas")
    FUNCTION = "get_sampler"
    CATEGORY = "sampling/custom_sampling/samplers"
    DESCRIPTION = ("A schedule learned by ld3 (LD3 / learned solver), run exactly: connect both outputs to "
                   "SamplerCustom or SamplerCustomAdvanced.")

    def get_sampler(self, schedule):
        record = load(schedule)
        sigmas = torch.tensor(record["sigmas"], dtype=torch.float32)
        return (sampler_object(ld3_kdiffusion.make_sampler(record)), sigmas)


NODE_CLASS_MAPPINGS = {"LD3Sampler": LD3Sampler}
NODE_DISPLAY_NAME_MAPPINGS = {"LD3Sampler": "LD3 Sampler (learned schedule)"}
