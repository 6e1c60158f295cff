"""The diffusers denoiser: network (+ autoencoder, + prompt encoder with its cache) as ``D(x, sigma, cond) -> x0``."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ...errors import ConfigError
from ...schedules.noise import NoiseSchedule
from ..adapters import NetworkDenoiser
from ..base import ConditionSpec, Denoiser
from ..prompts import NULL_PROMPT, PromptBank
from .call import DiffusersCall
from .trees import expand, row, stack_rows, to_device


class DiffusersDenoiser(Denoiser):
    """A diffusers network (+ optional autoencoder and text encoder) as ``D(x, sigma, cond) -> x0``.

    Args:
        net: the diffusers network (``UNet2DModel``, ``UNet2DConditionModel``, ``DiTTransformer2DModel``,
            ``SD3Transformer2DModel``; any module taking ``sample``/``hidden_states`` and ``timestep``).
        schedule, prediction, time_input, time_scale: as for :class:`NetworkDenoiser`.
        shape: ``(C, H, W)`` of the state (latents for latent models).
        vae: optional autoencoder (``AutoencoderKL`` / ``VQModel``); ``decode`` uses it.
        vae_scaling, vae_shift: ``decode(x) = vae.decode(x / vae_scaling + vae_shift)``.
        image_shape: ``(C, H, W)`` of decoded images (defaults to ``shape``).
        condition: the :class:`ConditionSpec` (kind ``none`` / ``class`` / ``text``).
        prompts: the :class:`PromptBank` of a text model.
        prompt_encoder: module ``prompts -> dict of network keyword tensors`` (text models).
        net_dtype: dtype the network runs in (the state stays float32).
        decode_batch_size: images per autoencoder call in ``decode``.
        prompt_cache: how many encoded prompts to keep (least recently used dropped).
    """

    def __init__(self, net, schedule: NoiseSchedule, prediction: str, shape, *, time_input: str = "t",
                 time_scale: float = 1.0, vae=None, vae_scaling: float = 1.0, vae_shift: float = 0.0,
                 image_shape=None, condition: ConditionSpec | None = None, prompts: PromptBank | None = None,
                 prompt_encoder: Callable | None = None, net_dtype: torch.dtype | None = None,
                 name: str = "diffusers", decode_batch_size: int = 16, prompt_cache: int = 64,
                 call: Callable | None = None):
        super().__init__()
        self.schedule = schedule
        self.shape = tuple(int(s) for s in shape)
        self._image_shape = tuple(int(s) for s in (image_shape or shape))
        self.condition = condition = condition or ConditionSpec()
        self.name = name
        self.prediction = prediction
        call = call or DiffusersCall(net, self.shape[0], net_dtype)
        self.inner = NetworkDenoiser(net, schedule, prediction=prediction, time_input=time_input,
                                     time_scale=time_scale, call=call)
        self.vae = vae
        self.vae_scaling = float(vae_scaling)
        self.vae_shift = float(vae_shift)
        self.prompts = prompts
        self.prompt_encoder = prompt_encoder
        self.net_dtype = net_dtype
        self.decode_batch_size = int(decode_batch_size)
        self.prompt_cache = int(prompt_cache)
        self._cache: OrderedDict = OrderedDict()
        if condition.kind == "text" and (prompts is None or prompt_encoder is None):
            raise ConfigError("a text-conditioned diffusers model needs prompts (model.prompts or model.prompts_file)")

    @property
    def net(self):
        return self.inner.net

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._image_shape

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the solver state: float32 (float64 for a float64 network)."""
        p = next(iter(self.inner.net.parameters()), None)
        return torch.float64 if p is not None and p.dtype == torch.float64 else torch.float32

    # -- conditions ------------------------------------------------------------------------------
    def draw_conditions(self, seeds: torch.Tensor) -> torch.Tensor | None:
        """Class labels (uniform per seed) or prompt indices (see :class:`PromptBank`), or None."""
        if self.condition.kind == "text":
            return self.prompts.select(seeds)
        return super().draw_conditions(seeds)

    def prompt_texts(self, cond: torch.Tensor) -> list[str]:
        """Prompt indices -> the prompt strings (``-1`` -> the negative prompt)."""
        if self.prompts is None:
            raise ConfigError(f"model '{self.name}' is not text-conditioned")
        return self.prompts.texts(cond)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> dict:
        """Prompts -> the network's keyword tensors, batch-first (SD 1/2: ``{"encoder_hidden_states": [B, L, D]}``)."""
        if self.prompt_encoder is None:
            raise ConfigError(f"model '{self.name}' has no text encoder")
        return to_device(self.prompt_encoder(list(prompts)), self.device, self.net_dtype)

    def _encode_indices(self, idx: torch.Tensor) -> dict:
        missing = [i for i in dict.fromkeys(idx.tolist()) if i not in self._cache]
        if missing:
            enc = self.encode_prompts(self.prompts.texts(torch.tensor(missing)))
            for j, i in enumerate(missing):
                self._cache[i] = row(enc, j)
        rows = []
        for i in idx.tolist():
            self._cache.move_to_end(i)
            rows.append(self._cache[i])
        out = to_device(stack_rows(rows), self.device, None)
        while len(self._cache) > max(self.prompt_cache, len(set(idx.tolist()))):
            self._cache.popitem(last=False)
        return out

    def null_condition(self, cond: Any) -> Any:
        """The unconditional batch matching ``cond`` (used as CFG's ``uncond``)."""
        if self.condition.kind == "class":
            return torch.full_like(cond, int(self.condition.extra["null_label"]))
        if isinstance(cond, torch.Tensor) and not cond.is_floating_point():
            return torch.full_like(cond, NULL_PROMPT)
        batch = cond.shape[0] if isinstance(cond, torch.Tensor) else next(iter(cond.values())).shape[0]
        neg = self._encode_indices(torch.tensor([NULL_PROMPT]))
        neg = expand(neg, batch)
        return neg["encoder_hidden_states"] if isinstance(cond, torch.Tensor) else neg

    def network_kwargs(self, cond: Any, batch: int) -> dict:
        """Condition batch -> keyword tensors for the network (see the module docstring)."""
        kind = self.condition.kind
        if kind == "none":
            if cond is None:
                return {}
            if isinstance(cond, dict):
                return to_device(cond, self.device, self.net_dtype)
            raise ConfigError(f"model '{self.name}' is unconditional but was given a condition")
        if kind == "class":
            if cond is None:
                if "null_label" not in self.condition.extra:
                    raise ConfigError(f"model '{self.name}' is class-conditional; pass class labels")
                cond = torch.full((batch,), int(self.condition.extra["null_label"]), dtype=torch.long)
            return {"class_labels": cond.to(self.device).long()}
        # text
        if cond is None:
            return expand(self._encode_indices(torch.tensor([NULL_PROMPT])), batch)
        if isinstance(cond, dict):
            return to_device(cond, self.device, self.net_dtype)
        if cond.is_floating_point():
            return {"encoder_hidden_states": cond.to(self.device, self.net_dtype or cond.dtype)}
        return self._encode_indices(cond.reshape(-1).cpu())

    # -- denoising -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any | None = None) -> torch.Tensor:
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        out = self.inner(work, sigma, self.network_kwargs(cond, x.shape[0]))
        return out.to(x.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] through the autoencoder (identity for pixel models)."""
        if self.vae is None:
            return x
        vdtype = next(self.vae.parameters()).dtype
        parts = []
        for z in x.split(self.decode_batch_size):
            z = z / self.vae_scaling + self.vae_shift
            parts.append(self.vae.decode(z.to(vdtype)).sample.to(x.dtype))
        return torch.cat(parts).clamp(-1.0, 1.0)

    def describe(self) -> dict:
        d = {**super().describe(), "prediction": self.prediction, "latent": self.vae is not None}
        if self.prompts is not None:
            d["n_prompts"] = len(self.prompts)
        return d
