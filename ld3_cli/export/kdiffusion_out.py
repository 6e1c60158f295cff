"""``kdiffusion_sigmas.py``: a torch tensor literal for ``k_diffusion.sampling.sample_*``.

k-diffusion's samplers take any decreasing sigma list in the EDM convention (the model is
called as ``model(x, sigma_batch)`` and returns x0).  Its own schedule builders
(``get_sigmas_karras`` ...) append a trailing 0, which makes the last step a first-order
step onto the denoised image; ld3's solvers instead stop at ``sigma_min``.  The file gives
both: ``sigmas`` (ld3's grid, same number of steps) and ``sigmas_to_zero`` (one more step).
"""
from __future__ import annotations

import ast

from ..errors import ConfigError
from .record import ExportSchedule, float_list, wrap

# ld3 solver -> the closest k-diffusion sampler (crowsonkb/k-diffusion; ComfyUI's fork has more)
KDIFFUSION_SAMPLERS = {
    "euler": "sample_euler",
    "heun": "sample_heun",
    "dpmpp": "sample_dpmpp_2m (second order; no deterministic third-order multistep sampler there)",
    "ipndm": "none in k-diffusion itself (ComfyUI's copy has sample_ipndm)",
    "deis": "none in k-diffusion itself (ComfyUI's copy has sample_deis)",
    "unipc": "none in k-diffusion itself (ComfyUI's sampler 'uni_pc' / 'uni_pc_bh2')",
}


def kdiffusion_snippet(es: ExportSchedule) -> str:
    sampler = KDIFFUSION_SAMPLERS.get(es.solver, "none known")
    lost_parts = es.time_steps_only()
    lost = ("this file carries the time steps only: " + "; ".join(lost_parts) + " (k-diffusion evaluates the "
            "network on the grid itself; schedule.json with ld3_sampler.py runs all of it)." if lost_parts else
            "nothing of the grid (this schedule has no decoupled evaluation times).")
    lines = [f'"""k-diffusion sigmas for {es.model} ({es.model_key}).', ""]
    lines += wrap(es.made_for())
    lines += ["", "Use with any k_diffusion.sampling.sample_* function (the model returns the denoised x0):", "",
              "    x = torch.randn(shape) * sigmas[0]", "    x0 = k_diffusion.sampling.sample_euler(model, x, sigmas)",
              ""]
    lines += wrap(
        "Convention: EDM noise levels, x = x0 + sigma * noise (for DDPM-type models sigma = sqrt((1 - "
        "alphas_cumprod) / alphas_cumprod), as in k-diffusion's CompVisDenoiser).  `sigmas` is ld3's grid: "
        "sigma_max first, ending at sigma_min (no trailing 0), so a sampler takes exactly the ld3 steps and returns "
        "x at sigma_min.  `sigmas_to_zero` appends k-diffusion's usual trailing 0: one more step (and, for most "
        "samplers, one more network evaluation) whose result is the denoised image.")
    lines.append("")
    lines += wrap(f"Closest k-diffusion sampler to ld3's {es.solver}: {sampler}.  The schedule was optimised for "
                  f"ld3's {es.solver_short()}; another sampler runs on the same times but is not what was optimised.  "
                  f"Not expressible here: {lost}")
    lines += [
        '"""',
        "import torch",
        "",
        f"sigmas = torch.tensor({float_list(es.sigmas.tolist())}, dtype=torch.float64)",
        "sigmas_to_zero = torch.cat([sigmas, sigmas.new_zeros([1])])",
        "",
    ]
    return "\n".join(lines)


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
