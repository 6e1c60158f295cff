"""Rectified-flow / flow-matching models as sigma-space denoisers (``model.kind: flow``).

Convention: ``x_t = (1 - t) x0 + t n`` for ``t`` in (0, 1) (t = 1 is pure noise), so the EDM
noise level is ``sigma = t / (1 - t)`` and the canonical state ``x = x_t / (1 - t)``
(:class:`~ld3_cli.schedules.noise.FlowMatching`).  The network predicts

* ``velocity`` (alias ``flow``): ``v = dx_t/dt = n - x0``, so ``x0 = x_t - t v``;
* ``x0``: the clean sample directly;
* ``eps``: the noise, so ``x0 = x - sigma eps``.

It is fed ``t`` (``time_input: t``) or ``1000 t`` (``time_input: t*1000``, the diffusers / SD3
convention).

Config keys::

    kind: flow
    network: {_target_: my_pkg.MyNet, ...}      # net(x_t [B,C,H,W], t_in [B], cond) -> prediction
    checkpoint: path/to/weights.safetensors     # optional state dict for `network` (.safetensors / .pt)
    # or, instead of `network`: a diffusers transformer directory
    diffusers: {path: weights/my-flow-model, subfolder: transformer}
    shape: [C, H, W]                            # required with `network`
    prediction: velocity | x0 | eps
    time_input: t | t*1000
    sigma_min: 0.002   sigma_max: 80            # native range t = sigma / (1 + sigma)
    num_classes: 10    null_label: 10    guidance_scale: 1.0   # class-conditional networks

:class:`GaussianFlowVelocity` is an analytic network: the exact velocity field of flow
matching on Gaussian data, whose denoiser is the closed-form Gaussian posterior mean.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingFileError
from ..schedules.noise import FlowMatching
from .adapters import NetworkDenoiser
from .base import ConditionSpec, Denoiser
from .guidance import CFGDenoiser

FLOW_PREDICTIONS = {"velocity": "flow", "flow": "flow", "x0": "x0", "eps": "eps"}
FLOW_TIME_INPUTS = ("t", "t*1000")


class FlowDenoiser(Denoiser):
    """A flow-matching network as ``D(x, sigma, cond) -> x0``.

    Args:
        net: ``net(x_t, t_in, cond) -> prediction`` (or any module when ``call`` is given).
        shape: ``(C, H, W)`` of the state.
        prediction: ``velocity`` | ``x0`` | ``eps`` (see module docstring).
        time_input: ``t`` or ``t*1000``.
        sigma_min, sigma_max: the sigma range of the schedule (native ``t = sigma / (1 + sigma)``).
        condition: its :class:`ConditionSpec`.
        call: optional ``call(net, x_t, t_in, cond)`` for other network signatures.
    """

    def __init__(self, net, shape: Sequence[int], prediction: str = "velocity", time_input: str = "t",
                 sigma_min: float = 0.002, sigma_max: float = 80.0, condition: ConditionSpec | None = None,
                 name: str = "flow", call: Callable[..., torch.Tensor] | None = None):
        super().__init__()
        if prediction not in FLOW_PREDICTIONS:
            raise ConfigError(f"flow model prediction '{prediction}' is unknown; "
                              f"choose one of {sorted(FLOW_PREDICTIONS)}")
        if time_input not in FLOW_TIME_INPUTS:
            raise ConfigError(f"flow model time_input '{time_input}' is unknown; choose one of {FLOW_TIME_INPUTS}")
        self.schedule = FlowMatching(t_min=sigma_min / (1.0 + sigma_min), t_max=sigma_max / (1.0 + sigma_max))
        self.shape = tuple(int(s) for s in shape)
        self.condition = condition = condition or ConditionSpec()
        self.name = name
        self.prediction = prediction
        self.inner = NetworkDenoiser(net, self.schedule, prediction=FLOW_PREDICTIONS[prediction],
                                     time_input=time_input, call=call)

    @property
    def net(self):
        return self.inner.net

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any | None = None) -> torch.Tensor:
        return self.inner(x, sigma, cond)

    def null_condition(self, cond: torch.Tensor) -> torch.Tensor:
        return torch.full_like(cond, int(self.condition.extra["null_label"]))


class GaussianFlowVelocity(torch.nn.Module):
    """Exact flow-matching predictor for data ``x0 ~ N(mean, std^2)`` (independent per element).

    With ``x_t = (1 - t) x0 + t n``: ``Var x_t = (1-t)^2 std^2 + t^2`` and

    * ``E[x0 | x_t] = mean + (1-t) std^2 (x_t - (1-t) mean) / Var x_t``
    * ``E[n  | x_t] = t (x_t - (1-t) mean) / Var x_t``
    * velocity ``v = E[n | x_t] - E[x0 | x_t]``.

    Args:
        mean, std: scalars or tensors broadcastable to ``shape``.
        shape: ``(C, H, W)``.
        time_scale: the network reads ``t = t_in / time_scale`` (1 for ``time_input: t``, 1000 for ``t*1000``).
        prediction: ``velocity`` | ``x0`` | ``eps`` -- what ``forward`` returns.
    Computed in float64, returned in the input's dtype.
    """

    def __init__(self, mean: float | Sequence | torch.Tensor = 0.0, std: float | Sequence | torch.Tensor = 1.0,
                 shape: Sequence[int] = (1, 8, 8), time_scale: float = 1.0, prediction: str = "velocity"):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float64).expand(self.shape).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float64).expand(self.shape).clone())
        self.time_scale = float(time_scale)
        if prediction not in ("velocity", "flow", "x0", "eps"):
            raise ConfigError(f"GaussianFlowVelocity prediction '{prediction}' is unknown")
        self.prediction = prediction

    def forward(self, x_t: torch.Tensor, t_in: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = (t_in.to(torch.float64) / self.time_scale).view(-1, 1, 1, 1)
        xt = x_t.to(torch.float64)
        var = self.std ** 2
        centred = xt - (1 - t) * self.mean
        total = (1 - t) ** 2 * var + t ** 2
        ex0 = self.mean + (1 - t) * var * centred / total
        en = t * centred / total
        out = {"velocity": en - ex0, "flow": en - ex0, "x0": ex0, "eps": en}[self.prediction]
        return out.to(x_t.dtype)

    def posterior_mean(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x0 + sigma n = x]`` in sigma-space (float64): the exact denoiser."""
        s2 = sigma.to(torch.float64).view(-1, 1, 1, 1) ** 2
        var = self.std ** 2
        return (self.mean + var / (var + s2) * (x.to(torch.float64) - self.mean)).to(x.dtype)


def _load_state(net: torch.nn.Module, path: Path, cfg: dict) -> None:
    if not path.is_file():
        url = f" from {cfg['url']}" if cfg.get("url") else ""
        raise MissingFileError(f"flow model checkpoint {path} not found; download it{url} to that path or set "
                               "model.checkpoint")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and cfg.get("state_key"):
            state = state[cfg["state_key"]]
    net.load_state_dict(state)


def _condition(cfg: dict, scale: float) -> ConditionSpec:
    if not cfg.get("num_classes"):
        return ConditionSpec()
    extra = {"null_label": int(cfg["null_label"])} if cfg.get("null_label") is not None else {}
    return ConditionSpec("class", int(cfg["num_classes"]), scale, extra)


def build(cfg: dict, ctx) -> Denoiser:
    """``model.kind: flow`` builder (see the module docstring for the keys)."""
    cfg = dict(cfg)
    scale = float(cfg.get("guidance_scale", 1.0))
    condition = _condition(cfg, scale)
    common = {"prediction": str(cfg.get("prediction", "velocity")), "sigma_min": float(cfg.get("sigma_min", 0.002)),
              "sigma_max": float(cfg.get("sigma_max", 80.0)), "condition": condition,
              "name": str(cfg.get("name", "flow"))}
    if cfg.get("network") is not None and cfg.get("diffusers") is not None:
        raise ConfigError("set only one of model.network and model.diffusers for a flow model")
    if cfg.get("network") is not None:
        from hydra.utils import instantiate

        net = instantiate(dict(cfg["network"]))
        if cfg.get("checkpoint"):
            _load_state(net, Path(str(cfg["checkpoint"])).expanduser(), cfg)
        if cfg.get("shape") is None:
            raise ConfigError("a flow model with model.network needs model.shape=[C,H,W]")
        model = FlowDenoiser(net, cfg["shape"], time_input=str(cfg.get("time_input", "t")), **common)
    elif cfg.get("diffusers") is not None:
        model = _diffusers_flow(dict(cfg["diffusers"]), cfg, common, ctx)
    else:
        raise ConfigError("a flow model needs model.network={_target_: ...} or model.diffusers={path: ...}")
    if scale == 1.0:
        return model
    if "null_label" not in condition.extra:
        raise ConfigError("model.guidance_scale != 1 needs a class-conditional flow model with model.num_classes "
                          "and model.null_label")
    return CFGDenoiser(model, scale, model.null_condition)


def _diffusers_flow(dcfg: dict, cfg: dict, common: dict, ctx) -> FlowDenoiser:
    """A diffusers flow transformer directory, called as ``net(hidden_states, timestep, class_labels?)``."""
    from .diffusers import DiffusersCall, load_component, parse_dtype, require, resolve_model_dir

    require("diffusers")
    root = resolve_model_dir({**cfg, **dcfg}, allow_download=bool(getattr(ctx, "allow_download", False)))
    dtype = parse_dtype(dcfg.get("dtype", cfg.get("dtype")))
    folder = dcfg.get("subfolder")
    if folder is None and (root / "transformer" / "config.json").is_file():
        folder = "transformer"
    net = load_component(root, folder, {}, dtype, dcfg)
    shape = cfg.get("shape")
    if shape is None:
        s = net.config.get("sample_size")
        if s is None:
            raise ConfigError("the transformer config has no sample_size; set model.shape=[C,H,W]")
        h, w = (s, s) if isinstance(s, int) else s
        shape = (int(net.config.in_channels), int(h), int(w))
    inner_call = DiffusersCall(net, int(shape[0]), dtype or next(net.parameters()).dtype)

    def call(n, x_t, t_in, cond):
        kwargs = cond if isinstance(cond, dict) else {"class_labels": cond} if cond is not None else None
        return inner_call(n, x_t, t_in, kwargs)

    return FlowDenoiser(net, shape, time_input=str(cfg.get("time_input", "t*1000")), call=call, **common)
