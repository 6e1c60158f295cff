"""``LD3Scheduler``: what ld3 learned, as a diffusers scheduler a stock pipeline uses unmodified.

``ld3 export`` writes this file beside ``schedule.json`` and ``ld3_sampler.py`` (needs torch and diffusers)::

    import sys; sys.path.insert(0, "path/to/export")
    from ld3_diffusers import LD3Scheduler
    pipe.scheduler = LD3Scheduler.from_export("path/to/export")
    image = pipe(prompt, num_inference_steps=pipe.scheduler.nfe).images[0]

It runs the exported sampler exactly -- the learned time steps, the decoupled evaluation times and state
scales, the multistep history and, for a learned solver, its coefficients (``ld3_sampler.py`` does the
arithmetic; this file only speaks the pipeline's language).  One pipeline step is one network evaluation:

* ``timesteps[k]``: the network's time at evaluation ``k`` (a VP model's fractional training step, a flow
  model's ``1000 t``, an EDM model's ``log(sigma) / 4``), as ld3 fed the network;
* ``sample`` between steps is the state the network sees next, in the model's own space: ``x_t`` for VP
  and flow models (so pipelines that call no ``scale_model_input``, like ``DDPMPipeline`` and
  ``StableDiffusion3Pipeline``, run it too), the EDM state for EDM models; ``scale_model_input`` applies the
  model's input preconditioning (identity, or ``c_in`` for EDM);
* ``init_noise_sigma`` is exactly ld3's start, ``sigma_max * noise`` in that space (with the analytic first
  step, the state of the first evaluation: ``start_factor * sigma_max * noise``, the first step being linear).
  Pipelines that do not multiply their start noise by it (DDPMPipeline, StableDiffusion3Pipeline) must be given
  ``latents = torch.randn(...) * scheduler.init_noise_sigma``; the scheduler says so when it matters (more
  than 1e-4 relative);
* after the last step ``prev_sample`` is ld3's final state ``x = x0 + sigma_min * noise`` (what ld3 decodes).

The schedule has a fixed number of evaluations (:attr:`nfe`): ``set_timesteps`` refuses another
``num_inference_steps``, custom ``timesteps`` and ``sigmas``.  ``save_pretrained`` / ``from_pretrained``
round-trip the whole schedule through ``scheduler_config.json``.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

try:
    from . import ld3_sampler
except ImportError:  # the export folder itself is on sys.path
    import ld3_sampler

logger = logging.getLogger(__name__)
NETWORK_KINDS = ("vp", "flow", "edm")
PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")
START_RTOL = 1e-4  # below this a pipeline's unscaled start noise changes nothing measurable


class LD3Scheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running an ld3 export (see the module docstring).

    Args (the export's ``schedule.json`` fields; :meth:`from_export` fills them):
        sigmas, sigmas_eval: the grid and the decoupled evaluation points (EDM sigmas, ``N + 1`` each).
        solver: ld3's solver name; coefficients: its multistep table (``None`` for Heun).
        eval_scales, noise_estimate, to_zero: how the network is evaluated; whether the run ends onto 0.
        analytic_first: the first step is analytic (no evaluation at ``sigmas[0]``).
        residual: the learned residual operator (its sizes and per-step weights), or ``None``.
        network_kind: ``vp`` (DDPM / LDM / SD), ``flow`` (SD3-style) or ``edm``.
        prediction_type: ``epsilon``, ``v_prediction``, ``sample`` or ``flow_prediction``.
        timestep_labels: the network's time at each grid point (``N + 1`` values).
        sigma_data: EDM's ``sigma_data`` (EDM networks only).
    """

    config_name = "scheduler_config.json"
    _compatibles: list = []
    order = 1

    @register_to_config
    def __init__(self, sigmas: list, sigmas_eval: list, solver: str, timestep_labels: list,
                 coefficients: Optional[dict] = None, eval_scales: Optional[list] = None,
                 noise_estimate: str = "step", to_zero: bool = False, network_kind: str = "vp",
                 prediction_type: str = "epsilon", sigma_data: float = 0.5, num_train_timesteps: int = 1000,
                 schedule_name: str = "ld3", analytic_first: bool = False, residual: Optional[dict] = None):
        if network_kind not in NETWORK_KINDS:
            raise ValueError(f"network_kind must be one of {NETWORK_KINDS}, got {network_kind!r}")
        if prediction_type not in PREDICTIONS or (network_kind == "edm" and prediction_type != "epsilon"):
            raise ValueError(f"prediction_type must be one of {PREDICTIONS} (epsilon, EDM's F, for an EDM network), "
                             f"got {prediction_type!r} for a {network_kind} network")
        if len(timestep_labels) != len(sigmas) or len(sigmas_eval) != len(sigmas):
            raise ValueError(f"sigmas, sigmas_eval and timestep_labels need {len(sigmas)} values each")
        self.record = {"format": ld3_sampler.FORMAT, "sigmas": list(sigmas), "sigmas_eval": list(sigmas_eval),
                       "solver": solver, "coefficients": coefficients, "eval_scales": eval_scales,
                       "noise_estimate": noise_estimate, "to_zero": bool(to_zero),
                       "analytic_first": bool(analytic_first), "residual": residual}
        ld3_sampler.check_record(self.record, "the scheduler config")
        self.points = ld3_sampler.evaluation_points(self.record)
        self.nfe = len(self.points)
        self.num_inference_steps = self.nfe
        self.timesteps = torch.tensor([float(timestep_labels[i]) for i in self.points], dtype=torch.float32)
        # the state at the first evaluation is start_factor x the start (1 unless the first step is analytic)
        self._start = ld3_sampler.start_factor(self.record)
        self.init_noise_sigma = self._native_scale(0) * float(sigmas[0]) * self._start
        self._reset()
        if network_kind != "edm" and abs(self.init_noise_sigma - 1.0) > START_RTOL:
            logger.warning("LD3Scheduler starts from %.6g x unit noise: pipelines that do not multiply their start "
                           "noise by scheduler.init_noise_sigma (DDPMPipeline, StableDiffusion3Pipeline) must be given "
                           "latents = torch.randn(shape) * scheduler.init_noise_sigma", self.init_noise_sigma)

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def from_export(cls, path: Union[str, Path]) -> "LD3Scheduler":
        """The scheduler of an ``ld3 export`` folder (or its ``schedule.json``)."""
        record = ld3_sampler.load_schedule(path)
        net = record.get("network")
        if not net:
            raise ValueError(f"{path}: ld3 does not know how this model's network is called in diffusers (an analytic "
                             "model, a custom denoiser, or an export older than this ld3); run the export with your "
                             "own denoiser through ld3_kdiffusion.make_sampler or ld3_sampler.sample instead")
        return cls(sigmas=record["sigmas"], sigmas_eval=record["sigmas_eval"], solver=record["solver"],
                   timestep_labels=net["time_labels"], coefficients=record.get("coefficients"),
                   eval_scales=record.get("eval_scales"), noise_estimate=record.get("noise_estimate", "step"),
                   to_zero=bool(record.get("to_zero", False)), network_kind=net["kind"],
                   prediction_type=net["prediction_type"], sigma_data=float(net.get("sigma_data", 0.5)),
                   num_train_timesteps=int(net.get("num_train_timesteps") or 1000),
                   schedule_name=str(record.get("schedule", "ld3")),
                   analytic_first=ld3_sampler.analytic_first(record), residual=record.get("residual"))

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    # -- the model's space ---------------------------------------------------------------------------
    def _alpha(self, sigma: float) -> float:
        """``x_t = alpha * x`` at noise level ``sigma`` (1 for EDM)."""
        kind = self.config.network_kind
        if kind == "vp":
            return 1.0 / math.sqrt(1.0 + sigma * sigma)
        if kind == "flow":
            return 1.0 / (1.0 + sigma)
        return 1.0

    def _scale(self, i: int) -> float:
        scales = self.config.eval_scales
        return 1.0 if scales is None else float(scales[i])

    def _native_scale(self, k: int) -> float:
        """The factor from ld3's state at evaluation ``k``'s grid point to the pipeline's ``sample``."""
        i = self.points[k]
        return self._alpha(float(self.config.sigmas_eval[i])) * self._scale(i)

    # -- the diffusers interface ---------------------------------------------------------------------
    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device] = None,
                      timesteps: Optional[list] = None, sigmas: Optional[list] = None, **kwargs) -> None:
        """Start a new run; ``num_inference_steps`` (if given) must be :attr:`nfe`."""
        if timesteps is not None or sigmas is not None:
            raise ValueError("LD3Scheduler runs the schedule ld3 learned; it takes no custom timesteps or sigmas")
        if num_inference_steps is not None and int(num_inference_steps) != self.nfe:
            raise ValueError(f"this ld3 schedule makes exactly {self.nfe} network evaluations; call the pipeline with "
                             f"num_inference_steps={self.nfe} (got {num_inference_steps})")
        self.timesteps = self.timesteps.to(device) if device is not None else self.timesteps
        self._reset()

    def _reset(self) -> None:
        self._run, self._step_index, self._last, self._last_version = None, 0, None, -1

    @property
    def step_index(self) -> int:
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The network's input: ``sample`` itself (VP, flow), or ``c_in * sample`` (EDM)."""
        if self.config.network_kind != "edm":
            return sample
        k = min(self._step_index, self.nfe - 1)
        s = float(self.config.sigmas_eval[self.points[k]])
        return sample / math.sqrt(s * s + self.config.sigma_data ** 2)

    def _denoised(self, out: torch.Tensor, x_in: torch.Tensor, sigma: float) -> torch.Tensor:
        """ld3's x0 estimate from the network output ``out`` at ``x_in`` (the network's input in sigma-space)."""
        kind, pred = self.config.network_kind, self.config.prediction_type
        out = out.to(x_in.dtype)
        if kind == "edm":
            sd = self.config.sigma_data
            c_skip = sd * sd / (sigma * sigma + sd * sd)
            c_out = sigma * sd / math.sqrt(sigma * sigma + sd * sd)
            return c_skip * x_in + (c_out if pred == "epsilon" else -c_out) * out
        if pred == "sample":
            return out
        if pred == "epsilon":
            return x_in - sigma * out
        a = self._alpha(sigma)
        x_t = a * x_in               # what the network saw, in its own space
        if pred == "v_prediction":
            return a * x_t - (a * sigma) * out
        t = sigma / (1.0 + sigma)   # flow_prediction: v = noise - x0, x_t = (1 - t) x0 + t noise
        return x_t - t * out

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, **kwargs):
        """One network evaluation done: ``prev_sample`` is the next network input (the final state at the end)."""
        k = self._step_index
        if k >= self.nfe:
            raise ValueError(f"all {self.nfe} evaluations of the schedule are done; call set_timesteps() to start "
                             "again")
        i = self.points[k]
        # ld3's state runs in float32 at least (as ld3 runs it beside a half-precision network); unless the pipeline
        # passed our own sample back untouched, its sample is the state there (before the state scale)
        if self._last is None or sample is not self._last or sample._version != self._last_version:
            point = sample.to(torch.promote_types(sample.dtype, torch.float32)) / self._native_scale(k)
            if self._run is None:  # from the start the first state implies (the same state unless analytic)
                self._run = ld3_sampler.LD3Run(self.record, point / self._start)
            self._run.set_point(point)
        x_in, _ = self._run.network_input()
        denoised = self._denoised(model_output, x_in, float(self.config.sigmas_eval[i]))
        self._run.advance(denoised)
        self._step_index += 1
        if self._run.done:
            prev, self._last = self._run.result.to(sample.dtype), None
        else:
            x_next, _ = self._run.network_input()
            prev = (x_next * self._alpha(float(self.config.sigmas_eval[self.points[k + 1]]))).to(sample.dtype)
            self._last, self._last_version = prev, prev._version
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def add_noise(self, original_samples, noise, timesteps):
        raise NotImplementedError("LD3Scheduler runs a whole learned schedule from pure noise; image-to-image "
                                  "(starting part-way) is not what was learned -- use a stock scheduler for it")
