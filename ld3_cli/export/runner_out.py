"""``ld3_sampler.py``: a small torch-only function that runs an exported ``schedule.json`` exactly.

The JSON export carries the whole sampler -- the grid, the decoupled evaluation (``sigmas_eval``,
``eval_scales``, ``noise_estimate``) and the multistep coefficient table (learned, or the solver's own
for a baseline) -- and this file runs it without ld3: the same operations in the same order as
:func:`ld3_cli.solvers.multistep.run_multistep`, so its result equals ``ld3``'s bit for bit (tested).
"""
from __future__ import annotations

from ..solvers.base import DEFAULT_NOISE_ESTIMATE
from .record import ExportSchedule

RUNNER = '''"""Run an ld3 schedule export (schedule.json) with any sigma-space denoiser; needs only torch.

Written by ld3 {version} next to schedule.json ({what}).

    import json, torch
    from ld3_sampler import sample
    record = json.load(open("schedule.json"))
    x = torch.randn(16, *shape, dtype=torch.float64) * record["sigmas"][0]
    x0 = sample(denoiser, x, record)         # the state at record["sigmas"][-1]

Conventions (EDM sigma-space): x = x0 + sigma * noise and denoiser(x, sigma) -> the x0 estimate, with
sigma a tensor [B].  A VP / DDPM network is seen through x = x_t / alpha_t, sigma = sqrt(1 - abar) / sqrt(abar).

Step i goes from sigmas[i] to sigmas[i + 1].  The network is evaluated at sigmas_eval[i] on the state
scaled by eval_scales[i]: D_i = denoiser(eval_scales[i] * x_i, sigmas_eval[i]); the noise estimate is
(x_i - D_i) / sigmas[i] (noise_estimate "step") or (eval_scales[i] * x_i - D_i) / sigmas_eval[i] ("eval").
With F_i = D_i (form "data") or the noise estimate (form "noise"):

    predictor  x' = a[i] x + b[i] F_i + sum_j pred[i][j - 1] (F_(i-j) - F_i)      j = 1 .. pred_terms[i]
    corrector  x  = a[i] x + b[i] F_i + corr[i][0] (D' - F_i) + sum_j corr[i][j] (F_(i-j) - F_i)

where D' is the evaluation at x' (reused as the next step's F; no corrector on the last step).
"""
import torch


def sample(denoiser, x, record):
    c = record.get("coefficients")
    if c is None:
        raise ValueError(f"solver {{record['solver']!r}} has no multistep table; run this schedule with ld3")

    def tensor(values, dtype=torch.float64):
        return torch.tensor(values, dtype=torch.float64, device=x.device).to(dtype)

    sig, sig_eval = tensor(record["sigmas"]), tensor(record["sigmas_eval"])
    net_sig = sig_eval.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    scales = None if record.get("eval_scales") is None else tensor(record["eval_scales"])
    at_eval = record.get("noise_estimate", {default_estimate!r}) == "eval"
    a, b = tensor(c["a"], x.dtype), tensor(c["b"], x.dtype)
    pred = tensor(c["pred"], x.dtype) if c["pred"] and c["pred"][0] else torch.zeros(len(c["a"]), 0, dtype=x.dtype)
    corr = None if c.get("corr") is None else tensor(c["corr"], x.dtype)
    history = pred.shape[1] + 1
    noise = c["form"] == "noise"

    def scaled(x, i):
        return x if scales is None else scales[i].to(x.dtype) * x

    def evaluate(x, i):
        return denoiser(scaled(x, i), net_sig[i].expand(x.shape[0]))

    def eps(x, den, i):
        if at_eval:
            return (scaled(x, i) - den) / sig_eval[i].to(x.dtype)
        return (x - den) / sig[i].to(x.dtype)

    def combine(weights, diffs):
        out = 0.0
        for k, d in enumerate(diffs):
            out = out + weights[k] * d
        return out

    hist = []
    den = evaluate(x, 0)
    for i in range(len(c["a"])):
        f = eps(x, den, i) if noise else den
        hist = ([f] + hist)[:history]
        diffs = [h - f for h in hist[1:]]
        base = a[i] * x + b[i] * f
        x_pred = base + combine(pred[i], diffs[:c["pred_terms"][i]])
        if i == len(c["a"]) - 1:
            return x_pred
        den = evaluate(x_pred, i + 1)
        if corr is None:
            x = x_pred
            continue
        x = base + corr[i][0] * (den - f) + combine(corr[i][1:], diffs[:c["corr_terms"][i]])
    return x
'''


def runner_script(es: ExportSchedule) -> str:
    """The text of ``ld3_sampler.py`` for this export."""
    from .. import __version__

    what = (f"{es.name}: {es.solver_label()}, NFE {es.nfe}"
            + (", learned coefficients" if es.learned_coefficients else ""))
    return RUNNER.format(version=__version__, what=what, default_estimate=DEFAULT_NOISE_ESTIMATE)
