"""Run an ld3 export (``schedule.json``) exactly, with torch only: the one runner behind every take-home file.

``ld3 export`` copies this file next to ``schedule.json``; ``ld3_kdiffusion.py`` (k-diffusion's sampler
signature), ``ld3_diffusers.py`` (a diffusers scheduler) and the ComfyUI node pack only adapt their
library's calling convention to it.  It performs the same operations in the same order as ld3's own
solvers, so ``sample(...)`` equals ``ld3 sample`` on the same noises bit for bit (tested on the CPU; on a GPU
the float64 coefficient math of ``ld3 sample`` may differ in the last bit).

Conventions (EDM sigma-space, those of ld3):

* state ``x = x0 + sigma * noise``; ``denoiser(x, sigma[B]) -> x0`` estimate; a run starts from
  ``x = sigmas[0] * noise`` and returns the state at ``sigmas[-1]`` (at 0 for ``to_zero`` schedules);
* evaluation ``k`` (``k = 0 .. nfe - 1``) feeds the network ``eval_scales[i] * x`` at ``sigmas_eval[i]``
  (LD3's decoupled times; ``i`` is the grid point of that evaluation) -- :meth:`LD3Run.network_input`;
* the noise estimate of the noise-form solvers is ``(x - D) / sigmas[i]`` (``noise_estimate`` "step")
  or ``(eval_scales[i] * x - D) / sigmas_eval[i]`` ("eval");
* a linear multistep table (``coefficients``; every solver but Heun) steps ``i -> i + 1`` with
  ``F_i = D_i`` (form "data") or the noise estimate (form "noise"):

      predictor  x' = a[i] x + b[i] F_i + sum_j pred[i][j - 1] (F_(i-j) - F_i)      j = 1 .. pred_terms[i]
      corrector  x  = a[i] x + b[i] F_i + corr[i][0] (D' - F_i) + sum_j corr[i][j] (F_(i-j) - F_i)

  where ``D'`` is the evaluation at ``x'`` (reused as the next step's ``F``; the last step has no
  corrector).  A table with one more step than the grid ends with a step onto 0 (``to_zero``);
* ``residual`` (tables only, version 5): a learned network added to each step's ``a[i] x + b[i] F_i`` before the
  history terms: ``(sigmas[i] - sigmas[i + 1]) R_i([x / sqrt(1 + sigmas[i]^2), F_i, F_(i-1), ...])`` (history
  zero-padded to ``residual["history"]``, channels stacked; ``R_i`` three 3x3 convolutions with SiLU between;
  ``sigmas[i + 1]`` is 0 on a ``to_zero`` table's last step; steps before ``residual["first"]`` have none, and
  ``residual["weights"]`` lists the others' in order) -- :class:`_Residual`;
* Heun (EDM): Euler predictor, trapezoid corrector; the last step is Euler (onto 0 for ``to_zero``);
* ``analytic_first`` (tables only): grid point 0 is not evaluated; its noise estimate is
  ``x / sqrt(1 + sigmas[0]^2)`` and ``D = x - sigmas[0] * that``, so the first evaluation is at grid point 1, at
  the state ``start_factor(record) * x`` (the first step is linear in ``x``).

Use:

    from ld3_sampler import load_schedule, sample
    record = load_schedule("path/to/export")          # the folder or its schedule.json
    x = torch.randn(16, *shape) * record["sigmas"][0]
    x0 = sample(denoiser, x, record)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

FORMAT = "ld3-schedule"
VERSION = 5  # the newest record this runner runs (4: analytic_first, 5: residual); a newer one may hold more
DEFAULT_NOISE_ESTIMATE = "step"


def load_schedule(path=None) -> dict:
    """The record of an export: ``path`` is ``schedule.json`` or its folder (default: this file's folder)."""
    p = Path(path).expanduser() if path is not None else Path(__file__).resolve().parent
    if p.is_dir():
        p = p / "schedule.json"
    if not p.is_file():
        raise FileNotFoundError(f"no ld3 export at {p}; write one with `ld3 export` (it holds schedule.json)")
    record = json.loads(p.read_text())
    check_record(record, str(p))
    return record


def check_record(record: dict, where: str = "the record") -> None:
    """Refuse what is not an ld3 export this runner can run (ValueError naming the problem)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{where} is not an ld3 schedule export (no \"format\": \"{FORMAT}\"); re-export it")
    if int(record.get("version", VERSION)) > VERSION:
        raise ValueError(f"{where} is a version-{record['version']} ld3 export; this ld3_sampler.py runs versions up "
                         f"to {VERSION}: copy the ld3_sampler.py written beside that schedule.json")
    missing = [k for k in ("sigmas", "sigmas_eval", "solver") if k not in record]
    if missing:
        raise ValueError(f"{where} lacks {missing}; re-export it with `ld3 export`")
    if record.get("coefficients") is None and record["solver"] not in ("heun", "k_heun"):
        raise ValueError(f"{where}: solver {record['solver']!r} has no coefficient table; re-export it with "
                         "`ld3 export` (this ld3 version writes the table of every multistep solver)")
    residual = record.get("residual")
    if residual is not None:
        if record.get("coefficients") is None:
            raise ValueError(f"{where}: a residual operator needs a multistep table; re-export it with `ld3 export`")
        given = len(residual.get("weights", ()))
        steps, first = len(record["coefficients"]["a"]), int(residual.get("first", 0))
        if given != steps - first:
            raise ValueError(f"{where}: the residual operator has {given} steps' weights, its table {steps} steps "
                             f"from step {first}; re-export it with `ld3 export`")
    if analytic_first(record) and record.get("coefficients") is None:
        raise ValueError(f"{where}: an analytic first step needs a multistep table; re-export it with `ld3 export`")


def analytic_first(record: dict) -> bool:
    """Whether grid point 0 is skipped (the analytic first step)."""
    return bool(record.get("analytic_first", False))


def analytic_noise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The analytic first step's noise estimate ``x / sqrt(1 + sigma^2)`` (``sigma`` a 0-d coefficient tensor)."""
    return x * torch.rsqrt(1 + sigma * sigma).to(x.dtype)


def start_factor(record: dict) -> float:
    """The state at the first evaluation over the start state ``x`` (1, or the analytic first step's factor)."""
    if not analytic_first(record):
        return 1.0
    c, sigma = record["coefficients"], float(record["sigmas"][0])
    r = 1.0 / (1.0 + sigma * sigma) ** 0.5
    return float(c["a"][0]) + float(c["b"][0]) * (r if c["form"] == "noise" else 1.0 - sigma * r)


def evaluation_points(record: dict) -> list:
    """The grid point ``i`` of each network evaluation of one run (its ``sigmas_eval[i]``, ``eval_scales[i]``)."""
    c = record.get("coefficients")
    if c is not None:
        return list(range(1 if analytic_first(record) else 0, len(c["a"])))
    steps = len(record["sigmas"]) - 1 + (1 if record.get("to_zero") else 0)
    return [p for i in range(steps) for p in ([i, i + 1] if i < steps - 1 else [i])]


class _Grid:
    """The record's numbers as tensors for one state ``x`` (device; sigmas in the dtypes ld3 uses)."""

    def __init__(self, record: dict, x: torch.Tensor):
        cdt = torch.float32 if x.device.type == "mps" else torch.float64  # ld3's coefficient dtype

        def tensor(values):  # made on the CPU: some devices (mps) hold no float64
            return torch.tensor(values, dtype=torch.float64).to(cdt).to(x.device)

        self.sigmas = tensor(record["sigmas"])
        self.sigmas_eval = tensor(record["sigmas_eval"])
        # the network sees float64 sigmas when the state is float64, else float32 (as ld3's Evaluator)
        self.net_sigmas = self.sigmas_eval.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        scales = record.get("eval_scales")
        self.scales = None if scales is None else tensor(scales)
        self.at_eval = record.get("noise_estimate", DEFAULT_NOISE_ESTIMATE) == "eval"
        self.analytic_first = analytic_first(record)
        self.batch = x.shape[0]

    def scaled(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x if self.scales is None else self.scales[i].to(x.dtype) * x

    def sigma_batch(self, i: int) -> torch.Tensor:
        return self.net_sigmas[i].expand(self.batch)

    def analytic_denoised(self, x: torch.Tensor) -> torch.Tensor:
        """``D_0`` of the analytic first step."""
        return x - self.sigmas[0].to(x.dtype) * analytic_noise(x, self.sigmas[0])

    def eps(self, x: torch.Tensor, den: torch.Tensor, i: int) -> torch.Tensor:
        if self.analytic_first and i == 0:
            return analytic_noise(x, self.sigmas[0])
        if self.at_eval:
            return (self.scaled(x, i) - den) / self.sigmas_eval[i].to(x.dtype)
        return (x - den) / self.sigmas[i].to(x.dtype)


def _combine(weights, diffs):
    out = 0.0
    for k, d in enumerate(diffs):
        out = out + weights[k] * d
    return out


class _Residual:
    """The record's residual operator, its weights in the state's dtype (float32 values, as ld3 keeps them)."""

    def __init__(self, spec: dict, x: torch.Tensor):
        self.history, self.first = int(spec["history"]), int(spec.get("first", 0))
        self.layers = [[(torch.tensor(step[f"w{k}"], dtype=torch.float32).to(x.device, x.dtype),
                         torch.tensor(step[f"b{k}"], dtype=torch.float32).to(x.device, x.dtype)) for k in (1, 2, 3)]
                       for step in spec["weights"]]

    def step(self, i: int, x: torch.Tensor, hist: list, sigma: torch.Tensor, sigma_next: torch.Tensor):
        pad = [torch.zeros_like(x)] * (self.history - len(hist))
        h = torch.cat([x * torch.rsqrt(1 + sigma * sigma).to(x.dtype), *hist[:self.history], *pad], 1)
        for k, (w, b) in enumerate(self.layers[i - self.first]):
            h = torch.nn.functional.conv2d(h, w, b, padding=1)
            if k < 2:
                h = torch.nn.functional.silu(h)
        return (sigma - sigma_next).to(x.dtype) * h


class _TableRun:
    """A linear multistep table, one evaluation at a time (the order of ld3's ``run_multistep``)."""

    def __init__(self, record: dict, grid: _Grid, x: torch.Tensor):
        c = record["coefficients"]
        dt = x.dtype

        def tensor(values):
            return torch.tensor(values, dtype=torch.float64).to(dt).to(x.device)

        self.grid = grid
        self.steps = len(c["a"])
        self.a, self.b = tensor(c["a"]), tensor(c["b"])
        no_history = torch.zeros(self.steps, 0, dtype=dt, device=x.device)
        self.pred = tensor(c["pred"]) if c["pred"] and c["pred"][0] else no_history
        self.corr = None if c.get("corr") is None else tensor(c["corr"])
        self.pred_terms, self.corr_terms = list(c["pred_terms"]), list(c.get("corr_terms") or [])
        self.history = self.pred.shape[1] + 1
        self.noise = c["form"] == "noise"
        self.residual = None if record.get("residual") is None else _Residual(record["residual"], x)
        self.point, self.x = x, x          # where the next evaluation happens; the state at the current grid point
        self.k, self.hist, self.pending, self.result = 0, [], None, None

    def grid_index(self) -> int:
        return self.k

    def set_point(self, x: torch.Tensor) -> None:
        self.point = x

    def advance(self, den: torch.Tensor, callback=None) -> None:
        i = self.k
        if i == 0 or self.corr is None:
            self.x = self.point
        else:  # the corrector of step i - 1, with the evaluation at its predictor (no extra evaluation)
            base, f, diffs = self.pending
            w = self.corr[i - 1]
            self.x = base + w[0] * (den - f) + _combine(w[1:], diffs[:self.corr_terms[i - 1]])
        x = self.x
        if callback is not None:
            callback(i, x, den)
        f = self.grid.eps(x, den, i) if self.noise else den
        self.hist = ([f] + self.hist)[:self.history]
        diffs = [h - f for h in self.hist[1:]]
        base = self.a[i] * x + self.b[i] * f
        if self.residual is not None and i >= self.residual.first:
            sig = self.grid.sigmas
            base = base + self.residual.step(i, x, self.hist, sig[i], sig[i + 1] if i + 1 < len(sig) else sig[i] * 0)
        x_pred = base + _combine(self.pred[i], diffs[:self.pred_terms[i]])
        self.k += 1
        if self.k == self.steps:
            self.result = x_pred
        else:
            self.pending, self.point = (base, f, diffs), x_pred


class _HeunRun:
    """Heun's method (EDM), one evaluation at a time (the order of ld3's ``sample_heun``)."""

    def __init__(self, record: dict, grid: _Grid, x: torch.Tensor):
        sig = record["sigmas"] + ([0.0] if record.get("to_zero") else [])
        self.sig = torch.tensor(sig, dtype=torch.float64).to(grid.sigmas.dtype).to(x.device)
        self.grid, self.steps = grid, len(sig) - 1
        self.x, self.point, self.i, self.second, self.d = x, x, 0, False, None
        self.result = None

    def grid_index(self) -> int:
        return self.i + 1 if self.second else self.i

    def set_point(self, x: torch.Tensor) -> None:
        self.point = x
        if not self.second:  # the evaluation at the grid point itself
            self.x = x

    def advance(self, den: torch.Tensor, callback=None) -> None:
        i, x = self.i, self.x
        h = self.sig[i + 1].to(x.dtype) - self.sig[i].to(x.dtype)
        if self.second:  # the evaluation at the Euler predictor: the trapezoid corrector
            d_next = self.grid.eps(self.point, den, i + 1)
            self.x = x + h * 0.5 * (self.d + d_next)
            self.i, self.second, self.point = i + 1, False, self.x
            return
        if callback is not None:
            callback(i, x, den)
        self.d = self.grid.eps(x, den, i)
        x_pred = x + h * self.d
        if i == self.steps - 1:
            self.result = x_pred
        else:
            self.point, self.second = x_pred, True


class LD3Run:
    """One run of an exported schedule as a sequence of network evaluations.

    ``x``: the state at ``sigmas[0]`` (``sigmas[0] * noise``), ``[B, ...]``.  Loop::

        run = LD3Run(record, x)
        while not run.done:
            x_in, sigma = run.network_input()       # the state the network sees and its sigma [B]
            run.advance(denoiser(x_in, sigma))       # the x0 estimate there
        x0 = run.result
    """

    def __init__(self, record: dict, x: torch.Tensor):
        check_record(record)
        self.record = record
        self.grid = _Grid(record, x)
        self._run = _TableRun(record, self.grid, x) if record.get("coefficients") is not None \
            else _HeunRun(record, self.grid, x)
        self.evaluations = len(evaluation_points(record))
        self.calls = 0
        self._first = None  # the analytic first step's callback arguments, given to the first advance's callback
        if self.grid.analytic_first:
            self._run.advance(self.grid.analytic_denoised(x), lambda *args: setattr(self, "_first", args))

    @property
    def done(self) -> bool:
        return self._run.result is not None

    @property
    def result(self) -> torch.Tensor:
        if self._run.result is None:
            raise RuntimeError(f"the run is not finished ({self.calls} of {self.evaluations} evaluations made)")
        return self._run.result

    @property
    def grid_index(self) -> int:
        """The grid point ``i`` of the next evaluation (its ``sigmas_eval[i]``, ``eval_scales[i]``)."""
        return self._run.grid_index()

    @property
    def current_point(self) -> torch.Tensor:
        """The state of the next evaluation before its state scale (``network_input`` scales it)."""
        return self._run.point

    def set_point(self, x: torch.Tensor) -> None:
        """Replace the state of the next evaluation (a library's own copy of it, e.g. a pipeline's latents)."""
        self._run.set_point(x)

    def network_input(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eval_scales[i] * x, sigmas_eval[i] as a [B] tensor)`` for the next evaluation."""
        if self.done:
            raise RuntimeError(f"the run is finished: all {self.evaluations} evaluations were made")
        i = self.grid_index
        return self.grid.scaled(self._run.point, i), self.grid.sigma_batch(i)

    def advance(self, denoised: torch.Tensor, callback=None) -> None:
        """Take the network's x0 estimate at :meth:`network_input` and move on.  ``callback(i, x_i, D_i)`` is
        called once per grid step with the state at ``sigmas[i]`` and the estimate that step uses."""
        self.calls += 1
        if self._first is not None:
            if callback is not None:
                callback(*self._first)
            self._first = None
        self._run.advance(denoised, callback)


def sample(denoiser, x: torch.Tensor, record: dict, callback=None) -> torch.Tensor:
    """Run ``record`` from ``x`` (the state at ``sigmas[0]``) with ``denoiser(x, sigma[B]) -> x0``."""
    run = LD3Run(record, x)
    while not run.done:
        x_in, sigma = run.network_input()
        run.advance(denoiser(x_in, sigma), callback)
    return run.result
