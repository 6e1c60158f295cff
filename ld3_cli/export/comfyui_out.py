"""ComfyUI ``SIGMAS``: ``comfyui_sigmas.txt`` (one line for the ManualSigmas node) and ``comfyui_sigmas.json``.

ComfyUI's custom-sampler nodes (SamplerCustom, SamplerCustomAdvanced) take a ``SIGMAS`` input:
a 1-D float tensor, noisiest first.  The core node ManualSigmas ("model/sampling/sigmas")
builds one from a text field by reading every number in it, written plainly (it does not read
exponents such as ``2e-3``); the ``.txt`` file is exactly such a line.

The values are in ComfyUI's sigma convention for the model: the EDM sigma for EDM and
DDPM-type models (ComfyUI's ``ModelSamplingDiscrete`` uses ``sqrt((1 - abar) / abar)``) and the
flow time ``t`` in [0, 1] for flow-matching models (``ModelSamplingDiscreteFlow``).  ComfyUI's
own schedulers end with 0; the ``.txt`` line ends at ``sigma_min`` like ld3's solver, and the
JSON also holds ``sigmas_to_zero`` (one more step onto the denoised image).
"""
from __future__ import annotations

import json
import re

from .. import __version__
from ..errors import ConfigError
from .record import ExportSchedule, decimal_text

# ld3 solver -> the ComfyUI sampler name (KSamplerSelect) that runs the same method family
COMFYUI_SAMPLERS = {"euler": "euler", "heun": "heun", "dpmpp": "dpmpp_2m", "ipndm": "ipndm", "deis": "deis",
                    "unipc": "uni_pc_bh2"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")


def comfyui_sampler(es: ExportSchedule):
    """The ComfyUI sampler name of the same method family as ld3's solver (None if there is none)."""
    if es.solver == "unipc" and str(es.solver_options.get("variant", "bh2")) == "bh1":
        return "uni_pc"
    return COMFYUI_SAMPLERS.get(es.solver)


def comfyui_values(es: ExportSchedule) -> tuple[list[float], str]:
    """``(values, space)``: the flow time for flow-matching models, else the EDM sigma."""
    if es.kind == "flow":
        return es.t.tolist(), "flow_t"
    return es.sigmas.tolist(), "sigma"


def comfyui_text(es: ExportSchedule) -> str:
    values, _ = comfyui_values(es)
    return ", ".join(decimal_text(v) for v in values) + "\n"


def comfyui_json(es: ExportSchedule) -> str:
    values, space = comfyui_values(es)
    data = {
        "sigmas": values,
        "sigmas_to_zero": values + [0.0],
        "space": space,
        "steps": es.steps,
        "model": es.model,
        "schedule": es.name,
        "made_for": {"solver": es.solver, "solver_options": es.solver_options, "nfe": es.nfe},
        "comfyui_sampler": comfyui_sampler(es),
        "notes": [
            "SIGMAS for SamplerCustom / SamplerCustomAdvanced: paste comfyui_sigmas.txt into a ManualSigmas node.",
            ("values are flow times t in [0, 1] (ComfyUI's sigma for flow models; set the model's shift to 1 "
             "so they are not shifted again)" if space == "flow_t" else
             "values are EDM sigmas (x = x0 + sigma * noise), ComfyUI's sigma for EDM and DDPM-type models"),
            "sigmas ends at sigma_min like ld3's solver; sigmas_to_zero adds ComfyUI's usual final 0 (one more step)",
            *(["these sigmas carry the time steps only; not expressible: " + "; ".join(es.time_steps_only())]
              if es.time_steps_only() else ["no decoupled evaluation times: nothing of the grid is lost"]),
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
