"""ComfyUI: the node pack ``comfyui_ld3/`` (exactly what was learned) and ``SIGMAS`` lines for stock samplers.

The node pack (runtime/comfyui_nodes.py, written as ``comfyui_ld3/__init__.py`` with the runner and the
schedule beside it) gives ``SamplerCustom`` / ``SamplerCustomAdvanced`` a SAMPLER and its SIGMAS that run the
whole learned sampler.  The text files are for ComfyUI's own samplers (``KSamplerSelect``):

* ``comfyui_sigmas.txt``: one line for the core ``ManualSigmas`` node (a text field read as every plain
  number in it: no exponents such as ``2e-3``).  For a schedule trained for a stock sampler (``solver=k_*``)
  it is the list that sampler was trained on, ending with 0; for ld3's own solvers it is ld3's grid, ending
  at ``sigma_min`` (a stock sampler on it runs another method than the one trained; the JSON says so);
* ``comfyui_sigmas_to_zero.txt`` (ld3's own solvers only): the same grid with ComfyUI's usual final 0;
* ``comfyui_sigmas.json``: the values, their space, the sampler they were trained for, notes.

The values are in ComfyUI's sigma convention for the model: the EDM sigma for EDM and DDPM-type models
(``ModelSamplingDiscrete``: ``sqrt((1 - abar) / abar)``) and the flow time ``t`` in [0, 1] for flow-matching
models (``ModelSamplingDiscreteFlow``).  Facts read from ComfyUI's source (comfy/samplers.py,
comfy/model_sampling.py at commit 005e370254d42fcc07904b607b2354dc091f814f; docs/export.md).
"""
from __future__ import annotations

import json
import re
from typing import Optional

from .. import __version__
from ..errors import ConfigError
from .record import ExportSchedule, decimal_text

# ld3 solver -> the ComfyUI sampler name (KSamplerSelect) of the same method family
COMFYUI_SAMPLERS = {"euler": "euler", "heun": "heun", "dpmpp": "dpmpp_2m", "ipndm": "ipndm", "deis": "deis",
                    "unipc": "uni_pc_bh2", "k_euler": "euler", "k_dpmpp_2m": "dpmpp_2m", "k_heun": "heun"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def comfyui_sampler(es: ExportSchedule):
    """The ComfyUI sampler name of the same method family as ld3's solver (None if there is none)."""
    if es.solver == "unipc" and str(es.solver_options.get("variant", "bh2")) == "bh1":
        return "uni_pc"
    return COMFYUI_SAMPLERS.get(es.solver)


def comfyui_values(es: ExportSchedule, to_zero: bool) -> tuple[list[float], str]:
    """``(values, space)``: the flow time for flow-matching models, else the EDM sigma (plus 0 for ``to_zero``)."""
    values = es.t.tolist() if es.kind == "flow" else es.sigmas.tolist()
    return values + ([0.0] if to_zero else []), "flow_t" if es.kind == "flow" else "sigma"


def comfyui_text(es: ExportSchedule) -> str:
    """The ManualSigmas line: the stock sampler's list (with its 0) for ``k_*`` schedules, else ld3's grid."""
    values, _ = comfyui_values(es, es.to_zero)
    return ", ".join(decimal_text(v) for v in values) + "\n"


def comfyui_to_zero_text(es: ExportSchedule) -> Optional[str]:
    """ld3's grid plus ComfyUI's usual final 0 (``None`` for a ``k_*`` schedule, whose line ends with 0 already)."""
    if es.to_zero:
        return None
    values, _ = comfyui_values(es, True)
    return ", ".join(decimal_text(v) for v in values) + "\n"


def _rounding_note(es: ExportSchedule) -> list[str]:
    """What ComfyUI's rounding of a discrete-time model's time means for this schedule (no note for others)."""
    if es.kind != "vp_discrete":
        return []
    if not es.comfyui_rounds_time():
        return ["trained with model.time_rounding=nearest: the network saw its time rounded to the nearest training "
                "step, as ComfyUI's ModelSamplingDiscrete feeds it"]
    return ["ComfyUI's ModelSamplingDiscrete rounds the network's time to the nearest training step; ld3 trained "
            "on the exact (fractional) step -- train with model.time_rounding=nearest to validate exactly what "
            "ComfyUI runs"]


def comfyui_json(es: ExportSchedule) -> str:
    values, space = comfyui_values(es, es.to_zero)
    with_zero, _ = comfyui_values(es, True)
    stock, lost = es.stock_warning(), es.time_steps_only()
    data = {
        "sigmas": values,
        "sigmas_to_zero": with_zero,
        "space": space,
        "steps": es.steps,
        "model": es.model,
        "schedule": es.name,
        "made_for": {"solver": es.solver, "solver_options": es.solver_options, "nfe": es.nfe},
        "trained_for": es.trained_for(),
        "comfyui_sampler": comfyui_sampler(es),
        "node_pack": "comfyui_ld3/ (copy it into ComfyUI/custom_nodes/): node 'LD3 Sampler' gives SAMPLER and "
                     "SIGMAS for SamplerCustom / SamplerCustomAdvanced and runs exactly what ld3 learned",
        "notes": [
            ("comfyui_sigmas.txt is the list this schedule was trained on for ComfyUI's "
             f"'{comfyui_sampler(es)}' (KSamplerSelect): paste it into ManualSigmas" if stock is None else
             "comfyui_sigmas.txt is ld3's grid (ending at sigma_min); comfyui_sigmas_to_zero.txt adds ComfyUI's usual "
             "final 0 (one more step). " + stock),
            ("values are flow times t in [0, 1] (ComfyUI's sigma for flow models; set the model's shift to 1 "
             "so they are not shifted again)" if space == "flow_t" else
             "values are EDM sigmas (x = x0 + sigma * noise), ComfyUI's sigma for EDM and DDPM-type models"),
            ("ComfyUI starts from noise * sqrt(1 + sigma_max^2) instead of noise * sigma_max when the list starts at "
             "the model's sigma_max (KSAMPLER's max_denoise; 1/(2 sigma_max^2) relative); the node pack starts "
             "from noise * sigmas[0] as ld3 does"),
            *_rounding_note(es),
            *(["a stock sampler on these sigmas does not run: " + "; ".join(lost)] if lost else []),
        ],
        "exported_by": f"ld3 {__version__}",
    }
    return json.dumps(data, indent=2) + "\n"


def parse_comfyui_text(text: str) -> list[float]:
    """The numbers of a ManualSigmas line (plain decimals separated by commas / spaces)."""
    if re.search(r"\d[eE][-+]?\d", text):
        raise ConfigError("the sigma line contains exponents (e.g. 2e-3), which ComfyUI's ManualSigmas does not "
                          "read; write plain decimals")
    values = [float(m) for m in _NUMBER.findall(text)]
    if not values:
        raise ConfigError("no numbers in the sigma line; re-export it with `ld3 export export.format=comfyui`")
    return values
