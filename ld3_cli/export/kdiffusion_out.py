"""``kdiffusion_sigmas.py``: the sigma list for k-diffusion's stock samplers, float32 like the models they call.

Exactly what was learned runs through ``ld3_kdiffusion.sample_ld3`` (written beside this file).  This file is
for the stock samplers: k-diffusion's samplers take any decreasing sigma list in the EDM convention (the model
is called as ``model(x, sigma_batch)`` and returns x0), in the list's dtype -- a float64 list turns a float32
state into float64 after the first step, so the list is float32.

* A schedule trained for a stock sampler (``solver=k_euler``, ``k_dpmpp_2m``, ``k_heun``): ``sigmas`` is the
  list that sampler was trained on, ending with 0; run it there and get what ld3 validated.
* A schedule for ld3's own solvers: ``sigmas`` is ld3's grid (ending at ``sigma_min``) and ``sigmas_to_zero``
  appends k-diffusion's usual 0; a stock sampler on either runs another method than the one trained.
"""
from __future__ import annotations

import ast

from ..errors import ConfigError
from ..solvers.stock import STOCK_SAMPLERS
from .record import ExportSchedule, float_list, wrap

# ld3 solver -> the closest k-diffusion sampler (crowsonkb/k-diffusion; ComfyUI's fork has more)
KDIFFUSION_SAMPLERS = {
    "euler": "sample_euler",
    "heun": "sample_heun",
    "dpmpp": "sample_dpmpp_2m (second order; no deterministic third-order multistep sampler there)",
    "ipndm": "none in k-diffusion itself (ComfyUI's copy has sample_ipndm)",
    "deis": "none in k-diffusion itself (ComfyUI's copy has sample_deis)",
    "unipc": "none in k-diffusion itself (ComfyUI's sampler 'uni_pc' / 'uni_pc_bh2')",
    **{k: v["k-diffusion"] for k, v in STOCK_SAMPLERS.items()},
}


def kdiffusion_snippet(es: ExportSchedule) -> str:
    sampler = KDIFFUSION_SAMPLERS.get(es.solver, "none known")
    lines = [f'"""k-diffusion sigmas for {es.model} ({es.model_key}).', ""]
    lines += wrap(es.made_for())
    lines.append("")
    if es.to_zero:
        lines += wrap(f"Trained for k-diffusion's {sampler} on exactly this list (ending with 0), so it runs there "
                      "as ld3 validated it:")
        lines += ["", "    x = torch.randn(shape) * sigmas[0]",
                  f"    x0 = k_diffusion.sampling.{sampler.split()[0]}(model, x, sigmas)", ""]
    else:
        lines += wrap("Exactly what was learned (" + (", ".join(es.time_steps_only()) or "the grid and the solver")
                      + ") runs with ld3_kdiffusion.py, beside this file, in k-diffusion's sampler signature:")
        lines += ["", "    from ld3_kdiffusion import SIGMAS, sample_ld3", "    x0 = sample_ld3(model, x, SIGMAS)", ""]
        lines += wrap("WARNING: " + es.stock_warning() + ".  With a stock sampler anyway (closest to ld3's "
                      f"{es.solver}: {sampler}):")
        lines += ["", "    x0 = k_diffusion.sampling.sample_dpmpp_2m(model, x, sigmas_to_zero)", ""]
    lines += wrap(
        "Convention: EDM noise levels, x = x0 + sigma * noise (for DDPM-type models sigma = sqrt((1 - "
        "alphas_cumprod) / alphas_cumprod), as in k-diffusion's CompVisDenoiser, which feeds the network the exact "
        "fractional step unless quantize=True).  The lists are float32, the dtype of the models k-diffusion calls.")
    lines += ['"""', "import torch", ""]
    if es.to_zero:
        lines.append(f"sigmas = torch.tensor({float_list(es.stock_sigmas)})")
    else:
        lines += [f"sigmas = torch.tensor({float_list(es.sigmas.tolist())})",
                  "sigmas_to_zero = torch.cat([sigmas, sigmas.new_zeros([1])])"]
    return "\n".join(lines + [""])


def parse_tensor_literal(text: str, name: str = "sigmas") -> list[float]:
    """The floats of ``<name> = torch.tensor([...], ...)`` in ``text``, read without executing it."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise ConfigError(f"not valid Python ({e}); re-export the k-diffusion file with `ld3 export`") from None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == name and isinstance(node.value, ast.Call) and node.value.args):
            values = ast.literal_eval(node.value.args[0])
            return [float(v) for v in values]
    raise ConfigError(f"no `{name} = torch.tensor([...])` in the text; re-export it with `ld3 export`")
