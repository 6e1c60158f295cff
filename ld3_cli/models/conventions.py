"""How a model's network is called, in the terms other libraries use (what an export needs to run it there).

:func:`network_convention` describes the network behind a sigma-space denoiser: its space (``vp``: ``x_t =
x / sqrt(1 + sigma^2)``, ``flow``: ``x_t = x / (1 + sigma)``, ``edm``: ``x`` with EDM's preconditioning), its
prediction in diffusers' names, and the time it is fed at given noise levels -- exactly as ld3 feeds it
(:class:`~ld3_cli.models.adapters.NetworkDenoiser`, :class:`~ld3_cli.models.edm.precond.EDMPrecond`).
Analytic models (the embedded mixture) and networks ld3 wraps otherwise have none.
"""
from __future__ import annotations

from typing import Optional

import torch

from .adapters import native_time_input, network_adapters

DIFFUSERS_PREDICTIONS = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "flow": "flow_prediction"}
SPACES = {"vp_discrete": "vp", "vp_linear": "vp", "vp_cosine": "vp", "flow": "flow"}


def network_convention(model, sigmas_eval: torch.Tensor) -> Optional[dict]:
    """``{"kind", "prediction_type", "time_labels", "time_rounding", "num_train_timesteps"[, "sigma_data"]}`` of
    ``model``'s network at the noise levels ``sigmas_eval`` (float64 ``[N + 1]``), or ``None``."""
    sig = torch.as_tensor(sigmas_eval, dtype=torch.float64)
    adapters = network_adapters(model)
    if adapters:
        a = adapters[0]
        space = SPACES.get(a.schedule.kind)
        if space is None or a.prediction not in DIFFUSERS_PREDICTIONS:
            return None
        labels = native_time_input(a.schedule, sig, a.time_input, a.time_scale, a.time_rounding)
        ac = getattr(a.schedule, "alphas_cumprod", None)
        return {"kind": space, "prediction_type": DIFFUSERS_PREDICTIONS[a.prediction],
                "time_labels": [float(v) for v in labels.tolist()], "time_input": a.time_input,
                "time_rounding": a.time_rounding, "num_train_timesteps": int(ac.numel()) if ac is not None else 1000}
    from .edm.precond import EDMPrecond

    edm = next((m for m in model.modules() if isinstance(m, EDMPrecond)), None) if isinstance(
        model, torch.nn.Module) else None
    if edm is None:
        return None
    return {"kind": "edm", "prediction_type": "epsilon", "time_labels": (torch.log(sig) / 4).tolist(),
            "time_input": "log_sigma/4", "time_rounding": "none", "num_train_timesteps": 1000,
            "sigma_data": float(edm.sigma_data)}
