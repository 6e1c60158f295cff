"""``diffusers_snippet.py``: runnable code that builds diffusers schedulers on an exported schedule.

Facts about diffusers this relies on (read from its source, 0.42):

* ``EulerDiscreteScheduler.set_timesteps(sigmas=[...])`` uses a custom list as given (cast to
  float32; nothing is appended -- ``final_sigmas_type`` only applies to its own schedules) and
  takes ``len(sigmas) - 1`` steps; the timesteps it hands the network come from its
  ``alphas_cumprod`` by linear interpolation of ``log sigma`` between training steps, which is
  exactly :class:`~ld3_cli.schedules.noise.VPDiscrete`'s native time.  Its sigma is the EDM
  sigma ``sqrt((1 - abar) / abar)``.
* ``EDMEulerScheduler.set_timesteps(sigmas=ramp)`` reads its argument as a ramp in [0, 1]
  through the Karras formula and appends a terminal value (0 by default); the ramp that
  reproduces given sigmas is the inverse of that formula (:func:`karras_ramp`).
* ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=[...])`` takes flow times ``t``,
  shifts them by ``shift`` (identity for ``shift=1``) and appends 0.
* ``DPMSolverMultistepScheduler.set_timesteps(timesteps=[...])`` casts to int64 (truncation),
  reads sigmas at those integer steps and appends the final sigma (``final_sigmas_type``);
  ``UniPCMultistepScheduler.set_timesteps`` accepts no custom timesteps, and custom sigmas only
  with ``use_flow_sigmas=True``; ``EDMDPMSolverMultistepScheduler`` accepts neither.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..schedules.noise import BETA_SCHEDULES, VPDiscrete, make_betas
from .record import ExportSchedule, float_list, py_float, wrap

KARRAS_RHO = 7.0


# -- facts derived from the schedule ------------------------------------------------------------
def _short(v: float) -> float:
    """``v`` to 12 significant digits (removes float noise from betas recovered from alphas_cumprod)."""
    return float(f"{float(v):.12g}")


def vp_beta_config(schedule: VPDiscrete) -> dict:
    """Keyword arguments of a beta-based diffusers scheduler with this ``alphas_cumprod``.

    Recognises diffusers' ``linear``, ``scaled_linear`` and ``squaredcos_cap_v2`` beta schedules
    (relative tolerance 1e-8 on the betas); anything else becomes ``trained_betas``.
    """
    ac = schedule.alphas_cumprod.to(torch.float64)
    n = ac.numel()
    betas = torch.cat([1 - ac[:1], 1 - ac[1:] / ac[:-1]])
    scale = float(betas.abs().max())

    def close(ref: torch.Tensor) -> bool:
        return float((betas - ref).abs().max()) <= 1e-8 * scale

    b0, b1 = float(betas[0]), float(betas[-1])
    for kind in BETA_SCHEDULES:
        if close(make_betas(kind, n, b0, b1)):
            ends = {"beta_start": _short(b0), "beta_end": _short(b1)} if kind != "squaredcos_cap_v2" else {}
            return {"num_train_timesteps": n, "beta_schedule": kind, **ends}
    return {"num_train_timesteps": n, "trained_betas": [float(b) for b in betas]}


def karras_ramp(sigmas, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> list[float]:
    """The ramp ``r`` with ``(max^(1/rho) + r (min^(1/rho) - max^(1/rho)))^rho = sigma`` for each sigma."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(float(s) ** (1 / rho) - hi) / (lo - hi) + 0.0 for s in sigmas]  # + 0.0 turns -0.0 into 0.0


def integer_timesteps(es: ExportSchedule) -> Optional[dict]:
    """What rounding ld3's native times to integer training steps does (DDPM-type models only, else None).

    Returns ``timesteps`` (nearest integers of ``t[0..N-1]``, the points where the network is
    evaluated), the sigmas there before and after rounding, their relative changes, the largest
    one and its index, the final sigma of ld3 and of diffusers' ``final_sigmas_type="sigma_min"``
    (``sigma`` at step 0), and pairs of steps that rounding merges (a multistep solver cannot
    take a zero-length step).
    """
    sched = es.noise_schedule
    if not isinstance(sched, VPDiscrete):
        return None
    t = es.t[:-1]
    steps = torch.round(t)
    rounded = sched.sigma(steps)
    sig = es.sigmas[:-1]
    rel = (rounded / sig - 1).abs()
    k = int(torch.argmax(rel))
    ints = [int(v) for v in steps.tolist()]
    merged = [(i, i + 1) for i in range(len(ints) - 1) if ints[i] == ints[i + 1]]
    return {"t": t.tolist(), "timesteps": ints, "sigmas": sig.tolist(), "rounded_sigmas": rounded.tolist(),
            "rel_change": rel.tolist(), "max_rel_change": float(rel[k]), "argmax": k,
            "final_sigma": float(es.sigmas[-1]), "diffusers_final_sigma": float(sched.sigma(torch.tensor(0.0))),
            "merged": merged}


# -- the snippet ---------------------------------------------------------------------------------
def _rounding_note(es: ExportSchedule, rep: Optional[dict]) -> list[str]:
    if rep is None:
        return wrap(
            f"Integer timesteps: not applicable -- this model's time is continuous ({es.kind} noise schedule). "
            "DPMSolverMultistepScheduler(timesteps=...) takes integer training steps of DDPM-type models; "
            "UniPCMultistepScheduler takes custom sigmas only with use_flow_sigmas=True (flow models; it then hands "
            "the network int64 timesteps int(t * num_train_timesteps)); EDMDPMSolverMultistepScheduler takes no "
            "custom schedule at all.  The Euler schedulers below carry the schedule exactly.")
    lines = wrap(
        "Integer timesteps: DPMSolverMultistepScheduler.set_timesteps(timesteps=...) casts them to int64 "
        "(truncation), so INTEGER_TIMESTEPS holds ld3's native times rounded to the nearest training step; the "
        "network is then evaluated at these sigmas instead of ld3's:")
    lines += ["", "     i          t_i   step        sigma_i    sigma(step)  rel. change"]
    for i, (t, s, st, r, c) in enumerate(zip(rep["t"], rep["timesteps"], rep["sigmas"], rep["rounded_sigmas"],
                                             rep["rel_change"])):
        lines.append(f"  {i:4d} {t:12.4f} {s:6d} {st:14.7g} {r:14.7g}  {c:.3e}")
    lines.append("")
    text = (f"Largest relative sigma change: {rep['max_rel_change']:.3e} (i = {rep['argmax']}).  Final sigma: ld3 "
            f"ends at {rep['final_sigma']:.7g}; final_sigmas_type=\"sigma_min\" ends at sigma(step 0) = "
            f"{rep['diffusers_final_sigma']:.7g}.")
    if rep["merged"]:
        pairs = ", ".join(f"{a} and {b}" for a, b in rep["merged"])
        text += f"  Rounding MERGES steps {pairs}: DPMSolverMultistep cannot run this schedule; use Euler."
    text += ("  UniPCMultistepScheduler.set_timesteps accepts neither custom timesteps nor (for these models) custom "
             "sigmas (only with use_flow_sigmas=True): it cannot run this schedule.")
    return lines + wrap(text)


def _sigmas_sentence(es: ExportSchedule) -> str:
    if es.solver == "k_euler":
        return ("SIGMAS is the list this schedule was trained on for a stock Euler sampler, ending with 0: "
                "EulerDiscreteScheduler runs it exactly as ld3 validated it.")
    if es.to_zero:
        stock = es.trained_for()["stock"]["k-diffusion"]
        return (f"SIGMAS is the list this schedule was trained on for k-diffusion's {stock} (ComfyUI's "
                f"{es.trained_for()['stock']['ComfyUI']}), ending with 0; EulerDiscreteScheduler runs it as Euler, "
                f"not as {stock} -- use that sampler, or LD3Scheduler, to get what ld3 validated.  SIGMAS_EVAL and "
                "NATIVE_T are the grid without its 0.")
    return ("SIGMAS is ld3's grid, ending at sigma_min; END_AT_ZERO = True appends 0 (one more step and network call, "
            "diffusers' usual ending).")


def _docstring(es: ExportSchedule, rep: Optional[dict]) -> list[str]:
    lines = [f'"""diffusers schedulers for {es.model} ({es.model_key}).', ""]
    lines += wrap(es.made_for())
    lines.append("")
    lines += wrap("Exactly what was learned: LD3Scheduler (ld3_diffusers.py, beside this file) runs the whole "
                  "sampler -- the time steps, the decoupled evaluation times and scales and any learned "
                  "coefficients -- inside a stock pipeline, one network evaluation per pipeline step:")
    lines += ["", "    pipe.scheduler = LD3Scheduler.from_export(EXPORT_DIR)",
              "    image = pipe(prompt, num_inference_steps=pipe.scheduler.nfe).images[0]", ""]
    lines += wrap("Pipelines that do not multiply their start noise by scheduler.init_noise_sigma (DDPMPipeline, "
                  "StableDiffusion3Pipeline) need latents=torch.randn(shape) * pipe.scheduler.init_noise_sigma.")
    lines.append("")
    lines += wrap(
        "The stock schedulers below carry the time steps only.  SIGMAS are EDM noise levels (x = x0 + sigma * "
        "noise), sigma_max first; for DDPM-type models this is diffusers' own sigma = sqrt((1 - alphas_cumprod) / "
        "alphas_cumprod).  " + _sigmas_sentence(es))
    lines += wrap("EulerDiscreteScheduler is built with timestep_spacing=\"linspace\", so its init_noise_sigma is "
                  "SIGMAS[0] (with \"leading\" spacing, as Stable Diffusion's configs have, it would start from "
                  "sqrt(1 + SIGMAS[0]^2) instead).")
    if es.kind == "edm":
        lines += wrap("EDMEulerScheduler (for EDM models) always appends a terminal sigma (0 here): SIGMAS plus one "
                      "step to 0, i.e. one network call more than ld3.")
    if es.kind == "flow":
        lines += wrap("FlowMatchEulerDiscreteScheduler (for flow models) takes flow times t = sigma / (1 + sigma) "
                      "(FLOW_T) with shift=1 -- a pipeline's own shift must be set to 1, or it shifts them again -- "
                      "and appends 0: FLOW_T plus one step to t = 0, one network call more than ld3.")
    warning = es.stock_warning() if es.solver != "k_euler" else None
    lost = es.time_steps_only()
    if warning or lost:
        lines += ["", "What a stock scheduler on these sigmas does not run (LD3Scheduler does):"]
        for part in lost + ([warning] if warning else []):
            lines += wrap(f"* {part}.", indent="  ", hang="  ")
    lines.append("")
    return lines + _rounding_note(es, rep) + ['"""']


def diffusers_snippet(es: ExportSchedule, model_path: Optional[str] = None) -> str:
    """The text of ``diffusers_snippet.py`` (imports diffusers; builds schedulers, runs no model)."""
    rep = integer_timesteps(es)
    # (scheduler class, the function that builds it, its lines); the last Euler-type one is the recommended one
    sections = [("EulerDiscreteScheduler", "euler_scheduler", _euler_section())]
    if es.kind == "edm":
        sections.append(("EDMEulerScheduler", "edm_euler_scheduler", _edm_section(es)))
    if es.kind == "flow":
        sections.append(("FlowMatchEulerDiscreteScheduler", "flow_match_scheduler", _flow_section(es)))
    recommended = sections[-1][1]
    if rep is not None and not rep["merged"]:  # rounding keeps every step: DPM-Solver can run it
        sections.append(("DPMSolverMultistepScheduler", "dpm_solver_scheduler", _dpm_section(es, rep)))
    lines = _docstring(es, rep)
    if es.kind == "edm":
        lines.append("import torch")
    lines += [f"from diffusers import {', '.join(sorted(cls for cls, _, _ in sections))}", ""]
    lines += _constants(es, model_path)
    for _, _, body in sections:
        lines += body
    return "\n".join(lines + _footer(es, recommended))


def _constants(es: ExportSchedule, model_path: Optional[str]) -> list[str]:
    lines = [
        "import os",
        "EXPORT_DIR = os.path.dirname(os.path.abspath(__file__))  # this folder: schedule.json, ld3_diffusers.py",
        "# the stock list (EDM sigmas) and where ld3's solver evaluates the network (LD3Scheduler runs that)",
        f"SIGMAS = {float_list(es.stock_sigmas)}",
        f"SIGMAS_EVAL = {float_list(es.sigmas_eval.tolist())}",
        f"# the model's native time t at SIGMAS ({es.kind} noise schedule)",
        f"NATIVE_T = {float_list(es.t.tolist())}",
        "END_AT_ZERO = False",
        "",
    ]
    if not isinstance(es.noise_schedule, VPDiscrete):
        return lines + [f"# this model ({es.kind} noise schedule) has no training betas: EulerDiscreteScheduler "
                        "carries the",
                        "# sigmas exactly, but the timesteps it derives from its default alphas_cumprod mean nothing "
                        "here",
                        "BETAS = {}"]
    lines += ["# the model's training noise schedule (what maps SIGMAS to the network's timesteps)",
              f"BETAS = {_kwargs_literal(vp_beta_config(es.noise_schedule))}"]
    if model_path:
        lines.append(f"# or: EulerDiscreteScheduler.from_pretrained({str(model_path)!r}, subfolder=\"scheduler\")")
    return lines


def _builder(constant: list[str], signature: str, doc: str, body: list[str]) -> list[str]:
    """One section of the snippet: a constant (comment lines and the assignment; may be empty), then a
    function ``signature`` with docstring ``doc`` that runs ``body`` and returns ``scheduler``."""
    lines = ["", ""] + (constant + ["", ""] if constant else [])
    return lines + [f"def {signature}:", f'    """{doc}"""', *(f"    {line}" for line in body), "    return scheduler"]


def _euler_section() -> list[str]:
    return _builder([], "euler_scheduler(end_at_zero=END_AT_ZERO)",
                    "EulerDiscreteScheduler on SIGMAS (its `sigmas` equal SIGMAS in float32, plus 0 with end_at_zero).",
                    ["scheduler = EulerDiscreteScheduler(**BETAS, timestep_spacing=\"linspace\")",
                     "scheduler.set_timesteps(sigmas=list(SIGMAS) + ([0.0] if end_at_zero and SIGMAS[-1] > 0 else "
                     "[]))"])


def _edm_section(es: ExportSchedule) -> list[str]:
    lo, hi = es.noise_schedule.sigma_min, es.noise_schedule.sigma_max
    return _builder(
        ["# EDMEulerScheduler reads `sigmas` as a ramp in [0, 1] through the Karras formula; this ramp",
         f"# inverts it (rho = {KARRAS_RHO:g}, sigma_min / sigma_max of the scheduler below)",
         f"EDM_RAMP = {float_list(karras_ramp(es.sigmas.tolist(), lo, hi))}"],
        "edm_euler_scheduler()", "EDMEulerScheduler whose `sigmas` are SIGMAS (float32) followed by its terminal 0.",
        [f"scheduler = EDMEulerScheduler(sigma_min={py_float(lo)}, sigma_max={py_float(hi)}, "
         f"rho={py_float(KARRAS_RHO)}, final_sigmas_type=\"zero\")",
         "scheduler.set_timesteps(num_inference_steps=len(EDM_RAMP), sigmas=torch.tensor(EDM_RAMP, "
         "dtype=torch.float64))"])


def _flow_section(es: ExportSchedule) -> list[str]:
    return _builder(
        ["# flow times t = sigma / (1 + sigma): what flow-matching schedulers call sigmas",
         f"FLOW_T = {float_list(es.t.tolist())}"],
        "flow_match_scheduler()",
        "FlowMatchEulerDiscreteScheduler whose `sigmas` are FLOW_T (float32) followed by its terminal 0.",
        ["scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)", "scheduler.set_timesteps(sigmas=FLOW_T)"])


def _dpm_section(es: ExportSchedule, rep: dict) -> list[str]:
    order = int(es.solver_options.get("order", 2)) if es.solver == "dpmpp" else 2
    return _builder(
        ["# ld3's native times rounded to training steps (see the table above)",
         f"INTEGER_TIMESTEPS = {rep['timesteps']}"],
        "dpm_solver_scheduler()",
        "DPM-Solver++ on INTEGER_TIMESTEPS (approximate: rounded times), ending at sigma(step 0).",
        [f"scheduler = DPMSolverMultistepScheduler(**BETAS, algorithm_type=\"dpmsolver++\", "
         f"solver_order={min(max(order, 1), 3)}, final_sigmas_type=\"sigma_min\")",
         "scheduler.set_timesteps(timesteps=INTEGER_TIMESTEPS)"])


def _footer(es: ExportSchedule, recommended: str) -> list[str]:
    if es.kind == "vp_discrete":
        stock = ["#   pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, "
                 "timestep_spacing=\"linspace\")",
                 "#   image = pipe(prompt, sigmas=SIGMAS).images[0]"]
    elif es.kind == "flow":
        stock = ["#   pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=1.0, "
                 "use_dynamic_shifting=False)",
                 "#   image = pipe(prompt, sigmas=FLOW_T).images[0]"]
    else:
        stock = [f"#   {recommended}() builds the scheduler; a pipeline that calls set_timesteps(num_inference_steps) "
                 "itself replaces its sigmas -- use LD3Scheduler there"]
    return [
        "",
        "",
        f"scheduler = {recommended}()",
        "# exactly what ld3 learned, in any stock pipeline:",
        "#   import sys; sys.path.insert(0, EXPORT_DIR); from ld3_diffusers import LD3Scheduler",
        "#   pipe.scheduler = LD3Scheduler.from_export(EXPORT_DIR)",
        "#   image = pipe(prompt, num_inference_steps=pipe.scheduler.nfe).images[0]",
        "# the time steps only, in a stock scheduler (pipelines whose __call__ takes `sigmas`):",
        *stock,
        "",
        'if __name__ == "__main__":',
        "    print(type(scheduler).__name__)",
        "    print(\"sigmas   \", [round(float(s), 6) for s in scheduler.sigmas])",
        "    print(\"timesteps\", [round(float(t), 4) for t in scheduler.timesteps])",
        "",
    ]


def _kwargs_literal(cfg: dict) -> str:
    parts = []
    for k, v in cfg.items():
        if isinstance(v, list):
            parts.append(f"{k!r}: {float_list(v)}")
        elif isinstance(v, float):
            parts.append(f"{k!r}: {py_float(v)}")
        else:
            parts.append(f"{k!r}: {v!r}")
    return "{" + ", ".join(parts) + "}"
