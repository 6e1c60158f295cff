"""Diffusers pipelines in a LOCAL directory as sigma-space denoisers (``model.kind: diffusers``).

Supported layouts (``model.path`` = the directory ``from_pretrained`` would read):

* pixel DDPM: ``unet/`` (``UNet2DModel``) + ``scheduler/`` (or the older flat layout:
  ``config.json`` + weights + ``scheduler_config.json`` at the top), e.g. google/ddpm-cifar10-32;
* unconditional LDM: ``unet/`` + ``vqvae/`` (``VQModel``) or ``vae/`` (``AutoencoderKL``);
* DiT: ``transformer/`` (``DiTTransformer2DModel``, class-conditional, learned sigma) + ``vae/``;
* Stable Diffusion 1.x / 2.x: ``unet/`` (``UNet2DConditionModel``) + ``vae/`` + ``text_encoder/``
  (CLIP) + ``tokenizer/``;
* Stable Diffusion 3 (flow matching): ``transformer/`` (``SD3Transformer2DModel``) + ``vae/`` +
  its text encoders, encoded through the pipeline's own ``encode_prompt``.

The noise schedule comes from the scheduler config: beta-based schedulers (``beta_schedule``
linear / scaled_linear / squaredcos_cap_v2 or ``trained_betas``, ``num_train_timesteps``,
``rescale_betas_zero_snr``) give :class:`VPDiscrete` whose native time is the (fractional)
training-step index fed to the network as is; ``FlowMatch*`` schedulers give
:class:`FlowMatching` with the network fed ``t * num_train_timesteps``.  ``prediction_type``
epsilon / v_prediction / sample map to ``eps`` / ``v`` / ``x0``; flow schedulers predict
``flow`` (``v = n - x0``).  Sampler settings (timestep_spacing, steps_offset, clip_sample)
do not define the model and are ignored.  ``model.scheduler: {...}`` overrides / supplies
scheduler keys (for directories without a scheduler config).

State and images: the solver state is the canonical ``x = x_t / alpha_t`` in float32 (the
network runs in ``model.dtype``); for latent models ``shape`` is the latent shape and
``decode(x)`` runs the autoencoder on ``x / scaling_factor + shift_factor`` and returns images
clamped to ``[-1, 1]``.  ``model.vae_scaling_factor`` overrides the autoencoder's value.

Conditions (``cond`` of ``forward``):

* class models (DiT, class-conditional UNets): ``[B]`` long labels; the null label (DiT: the
  number of classes) is the unconditional input of classifier-free guidance;
* text models: ``[B]`` long *prompt indices* into the configured prompts (``-1`` = negative
  prompt), see :mod:`ld3_cli.models.prompts`; also accepted: a float tensor of text
  embeddings ``[B, L, D]`` (SD 1/2) or a dict of network keyword tensors (e.g. the output of
  :meth:`DiffusersDenoiser.encode_prompts`, with a batch axis of B).
  ``draw_conditions(seeds)`` picks the prompt indices; ``encode_prompts(list_of_str)`` turns
  prompts into the tensors the network takes.

``model.guidance_scale != 1`` wraps the model in :class:`~ld3_cli.models.guidance.CFGDenoiser`.
"""
from __future__ import annotations

import inspect
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, MissingFileError
from ..schedules.noise import FlowMatching, NoiseSchedule, VPDiscrete
from .adapters import NetworkDenoiser
from .base import ConditionSpec, Denoiser
from .guidance import CFGDenoiser
from .prompts import NULL_PROMPT, PromptBank

INSTALL_HINT = "pip install -e .[diffusers]"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
NETWORK_COMPONENTS = ("unet", "transformer")
VAE_COMPONENTS = ("vae", "vqvae")


# -- optional dependencies ---------------------------------------------------------------------
def require(package: str):
    """Import ``diffusers`` / ``transformers`` / ``huggingface_hub`` or raise a ConfigError with the fix."""
    try:
        return __import__(package)
    except ImportError as e:
        raise ConfigError(f"diffusers models need the optional package '{package}'; install the extra with "
                          f"`{INSTALL_HINT}`") from e


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``model.dtype`` (float16 | bfloat16 | float32, or None = as stored) -> torch dtype."""
    if name is None:
        return None
    if isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in DTYPES:
        raise ConfigError(f"model.dtype '{name}' is unknown; choose float16, bfloat16 or float32")
    return DTYPES[key]


# -- locating the directory ---------------------------------------------------------------------
def hf_repo_id(url: str | None) -> str | None:
    """``https://huggingface.co/<org>/<name>[/...]`` -> ``<org>/<name>`` (None for other URLs)."""
    prefix = "https://huggingface.co/"
    if not url or not str(url).startswith(prefix):
        return None
    parts = str(url)[len(prefix):].strip("/").split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def fetch_instructions(cfg: dict, path: Path) -> str:
    """How to obtain the directory ``path`` for this model config (one sentence)."""
    repo = cfg.get("repo_id") or hf_repo_id(cfg.get("url"))
    if repo:
        return (f"download {cfg.get('url') or repo} with `hf download {repo} --local-dir {path}` "
                f"(older huggingface_hub: `huggingface-cli download {repo} --local-dir {path}`)")
    if cfg.get("url"):
        return (f"download {cfg['url']} and convert it to a diffusers directory at {path} "
                "(see docs/models-diffusers.md)")
    return "set model.path to a diffusers model directory"


def resolve_model_dir(cfg: dict, allow_download: bool = False) -> Path:
    """The local model directory; MissingFileError (naming URL, path and fetch command) if absent."""
    if not cfg.get("path"):
        raise ConfigError("model.path is not set; point it at a local diffusers directory, "
                          "e.g. model.path=weights/ddpm-cifar10-32")
    path = Path(str(cfg["path"])).expanduser()
    if path.is_dir():
        return path
    repo = cfg.get("repo_id") or hf_repo_id(cfg.get("url"))
    if cfg.get("download") and allow_download and repo:
        hub = require("huggingface_hub")
        hub.snapshot_download(repo_id=repo, local_dir=str(path))
        return path
    name = cfg.get("name") or cfg.get("file_name") or path.name
    raise MissingFileError(f"diffusers model directory {path} for model '{name}' not found; "
                           f"{fetch_instructions(cfg, path)}, or set LD3_WEIGHTS / model.path to where it is")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); re-download the model directory") from e


def component_folder(root: Path, names: tuple[str, ...], index: dict) -> str | None:
    """The first of ``names`` that is a component (listed in model_index.json or a folder with a config)."""
    for n in names:
        entry = index.get(n)
        if isinstance(entry, (list, tuple)) and entry and entry[0] is None:
            continue
        if (root / n / "config.json").is_file() or (n in index and (root / n).is_dir()):
            return n
    return None


# -- scheduler config -> noise schedule ----------------------------------------------------------
def read_scheduler_config(root: Path, overrides: dict | None = None) -> dict:
    """``scheduler/scheduler_config.json`` (or the flat ``scheduler_config.json``) updated by ``overrides``."""
    found = {}
    for p in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if p.is_file():
            found = _read_json(p)
            break
    out = {**found, **dict(overrides or {})}
    if not out:
        raise MissingFileError(f"no scheduler config in {root} (looked for scheduler/scheduler_config.json and "
                               "scheduler_config.json); add it, or give the schedule as model.scheduler: "
                               "{beta_schedule: ..., beta_start: ..., beta_end: ..., num_train_timesteps: ...}")
    return out


def _num_train_timesteps(sc: dict) -> int:
    return int(sc.get("num_train_timesteps", sc.get("timesteps", 1000)))


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """Betas of the squared-cosine alpha-bar (Nichol & Dhariwal), capped at ``max_beta``."""
    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float64)


def alphas_cumprod_from_config(sc: dict) -> torch.Tensor:
    """float64 ``alphas_cumprod[0..N-1]`` of a beta-based diffusers scheduler config."""
    n = _num_train_timesteps(sc)
    if sc.get("trained_betas") is not None:
        betas = torch.as_tensor(sc["trained_betas"], dtype=torch.float64)
    else:
        kind = sc.get("beta_schedule", "linear")
        b0, b1 = float(sc.get("beta_start", 1e-4)), float(sc.get("beta_end", 2e-2))
        if kind == "linear":
            betas = torch.linspace(b0, b1, n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            betas = _cosine_betas(n)
        else:
            raise ConfigError(f"scheduler beta_schedule '{kind}' is not supported; use linear, scaled_linear, "
                              "squaredcos_cap_v2 or give trained_betas in model.scheduler")
    ac = torch.cumprod(1.0 - betas, dim=0)
    if sc.get("rescale_betas_zero_snr"):
        # zero terminal SNR (Lin et al. 2024): shift/scale sqrt(alpha_bar) so the last is 0, the first unchanged;
        # the last value is then set to 2^-24 as diffusers' samplers do, to keep sigma finite.
        r = ac.sqrt()
        r0, rT = r[0].clone(), r[-1].clone()
        ac = ((r - rT) * (r0 / (r0 - rT))) ** 2
        ac[-1] = 2.0 ** -24
    return ac


def schedule_from_scheduler_config(sc: dict, cfg: dict | None = None) -> tuple[NoiseSchedule, str, str, float]:
    """-> ``(schedule, prediction, time_input, time_scale)`` for :class:`NetworkDenoiser`.

    ``cfg`` may set ``first_step`` (VP), ``sigma_min`` / ``sigma_max`` (flow) and ``prediction``
    (ld3 names eps / v / x0 / flow, overriding the scheduler's ``prediction_type``).
    """
    cfg = cfg or {}
    cls = str(sc.get("_class_name", ""))
    n = _num_train_timesteps(sc)
    if cls.startswith("EDM"):
        raise ConfigError(f"scheduler {cls} describes an EDM-parameterised model; load it with model.kind=edm")
    if "FlowMatch" in cls or sc.get("prediction_type") == "flow_prediction":
        shift = 1.0 if sc.get("use_dynamic_shifting") else float(sc.get("shift", 1.0))
        s = 1.0 / n
        t_min = shift * s / (1 + (shift - 1) * s)
        if cfg.get("sigma_min") is not None:
            t_min = float(cfg["sigma_min"]) / (1 + float(cfg["sigma_min"]))
        sig_max = float(cfg.get("sigma_max", 80.0))
        schedule: NoiseSchedule = FlowMatching(t_min=t_min, t_max=sig_max / (1 + sig_max))
        prediction = "flow"
        time_input, time_scale = ("t*1000", 1.0) if n == 1000 else ("t/T", 1.0 / n)
    else:
        schedule = VPDiscrete(alphas_cumprod_from_config(sc), first_step=int(cfg.get("first_step", 0)))
        ptype = sc.get("prediction_type", "epsilon")
        if ptype not in PREDICTION_TYPES:
            raise ConfigError(f"scheduler prediction_type '{ptype}' is unknown; "
                              f"expected one of {sorted(PREDICTION_TYPES)}")
        prediction = PREDICTION_TYPES[ptype]
        time_input, time_scale = "t", 1.0
    if cfg.get("prediction"):
        prediction = str(cfg["prediction"])
    return schedule, prediction, time_input, time_scale


# -- calling a diffusers network ------------------------------------------------------------------
class DiffusersCall:
    """``call(net, x_t, t_in, kwargs) -> prediction`` for diffusers networks.

    Passes ``x_t`` (cast to the network dtype) as ``sample`` / ``hidden_states`` and ``t_in``
    as ``timestep`` with the extra keyword tensors in ``kwargs``; returns the first output
    with its first ``channels`` channels (learned-variance models output ``2 * channels``).
    """

    def __init__(self, net, channels: int, dtype: torch.dtype | None = None):
        params = inspect.signature(net.forward).parameters
        self.x_key = "sample" if "sample" in params else "hidden_states" if "hidden_states" in params else None
        self.return_dict = "return_dict" in params
        self.channels = int(channels)
        self.dtype = dtype

    def __call__(self, net, x_t: torch.Tensor, t_in: torch.Tensor, kwargs: dict | None) -> torch.Tensor:
        x_in = x_t.to(self.dtype) if self.dtype is not None else x_t
        args = dict(kwargs or {})
        args["timestep"] = t_in
        if self.return_dict:
            args["return_dict"] = False
        out = net(x_in, **args) if self.x_key is None else net(**{self.x_key: x_in}, **args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif hasattr(out, "sample"):
            out = out.sample
        if out.shape[1] == 2 * self.channels:
            out = out[:, : self.channels]
        return out


def _to(obj: Any, device, dtype: torch.dtype | None) -> Any:
    """Move tensors (and dicts of them) to ``device``; floating tensors also to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype if (dtype is not None and obj.is_floating_point()) else obj.dtype)
    if isinstance(obj, dict):
        return {k: _to(v, device, dtype) for k, v in obj.items()}
    return obj


def _expand(obj: Any, batch: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.expand(batch, *obj.shape[1:])
    return {k: _expand(v, batch) for k, v in obj.items()}


def _stack_rows(rows: list) -> Any:
    if isinstance(rows[0], torch.Tensor):
        return torch.stack(rows)
    return {k: _stack_rows([r[k] for r in rows]) for k in rows[0]}


def _row(obj: Any, i: int) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj[i]
    return {k: _row(v, i) for k, v in obj.items()}


# -- prompt encoders ---------------------------------------------------------------------------
class ClipPromptEncoder(torch.nn.Module):
    """Stable Diffusion 1.x / 2.x text conditioning: tokenizer + CLIP text model -> last hidden state.

    ``forward(prompts: list[str]) -> {"encoder_hidden_states": [B, L, D]}``; prompts are padded
    / truncated to the tokenizer's ``model_max_length`` (77 for CLIP).
    """

    def __init__(self, tokenizer, text_encoder):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    def forward(self, prompts: list[str]) -> dict:
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tok.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        out = self.text_encoder(tok.input_ids.to(device), attention_mask=mask)
        return {"encoder_hidden_states": out[0]}


class PipelinePromptEncoder(torch.nn.Module):
    """Multi-encoder pipelines (Stable Diffusion 3): the pipeline's own ``encode_prompt``.

    ``forward(prompts) -> {"encoder_hidden_states": [B, L, D], "pooled_projections": [B, P]}``.
    """

    def __init__(self, pipe, max_sequence_length: int = 256):
        super().__init__()
        self.pipe = pipe
        self.encoders = torch.nn.ModuleList(
            [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
             if m is not None])
        self.max_sequence_length = int(max_sequence_length)

    def forward(self, prompts: list[str]) -> dict:
        device = next(self.encoders[0].parameters()).device
        emb, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None, device=device,
                                                    num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                    max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}


# -- the denoiser ------------------------------------------------------------------------------
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
        return _to(self.prompt_encoder(list(prompts)), self.device, self.net_dtype)

    def _encode_indices(self, idx: torch.Tensor) -> dict:
        missing = [i for i in dict.fromkeys(idx.tolist()) if i not in self._cache]
        if missing:
            enc = self.encode_prompts(self.prompts.texts(torch.tensor(missing)))
            for j, i in enumerate(missing):
                self._cache[i] = _row(enc, j)
        rows = []
        for i in idx.tolist():
            self._cache.move_to_end(i)
            rows.append(self._cache[i])
        out = _to(_stack_rows(rows), self.device, None)
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
        neg = _expand(neg, batch)
        return neg["encoder_hidden_states"] if isinstance(cond, torch.Tensor) else neg

    def network_kwargs(self, cond: Any, batch: int) -> dict:
        """Condition batch -> keyword tensors for the network (see the module docstring)."""
        kind = self.condition.kind
        if kind == "none":
            if cond is None:
                return {}
            if isinstance(cond, dict):
                return _to(cond, self.device, self.net_dtype)
            raise ConfigError(f"model '{self.name}' is unconditional but was given a condition")
        if kind == "class":
            if cond is None:
                if "null_label" not in self.condition.extra:
                    raise ConfigError(f"model '{self.name}' is class-conditional; pass class labels")
                cond = torch.full((batch,), int(self.condition.extra["null_label"]), dtype=torch.long)
            return {"class_labels": cond.to(self.device).long()}
        # text
        if cond is None:
            return _expand(self._encode_indices(torch.tensor([NULL_PROMPT])), batch)
        if isinstance(cond, dict):
            return _to(cond, self.device, self.net_dtype)
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


# -- loading -----------------------------------------------------------------------------------
def load_component(root: Path, folder: str | None, index: dict, dtype: torch.dtype | None, cfg: dict):
    """``from_pretrained`` one component (local files only); the class comes from model_index.json or
    the component's config.json (``_class_name`` for diffusers, ``architectures`` for transformers)."""
    where = root / folder if folder else root
    lib, cls_name = None, None
    if folder and isinstance(index.get(folder), (list, tuple)):
        lib, cls_name = index[folder][0], index[folder][1]
    conf_path = where / "config.json"
    conf = _read_json(conf_path) if conf_path.is_file() else {}
    if cls_name is None:
        if "_class_name" in conf:
            lib, cls_name = "diffusers", conf["_class_name"]
        elif conf.get("architectures"):
            lib, cls_name = "transformers", conf["architectures"][0]
        elif folder and folder.startswith("tokenizer"):
            lib, cls_name = "transformers", "AutoTokenizer"
        else:
            raise ConfigError(f"cannot tell which class to load from {where}; is it a diffusers directory?")
    module = require("diffusers" if lib == "diffusers" else "transformers")
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ConfigError(f"{where} needs {lib}.{cls_name}, which the installed {lib} lacks; upgrade it "
                          f"(`{INSTALL_HINT} --upgrade`)")
    kwargs: dict = {"local_files_only": True}
    if folder:
        kwargs["subfolder"] = folder
    if lib == "diffusers":
        if dtype is not None:
            kwargs["torch_dtype"] = dtype
        if cfg.get("variant"):
            kwargs["variant"] = cfg["variant"]
    try:
        obj = cls.from_pretrained(str(root), **kwargs)
    except OSError as e:                     # diffusers / transformers report missing local files as OSError
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingFileError(f"cannot load {cls_name} from {where} ({detail}); the directory is incomplete: "
                               f"{fetch_instructions(cfg, root)}") from e
    if lib != "diffusers" and dtype is not None and isinstance(obj, torch.nn.Module):
        obj = obj.to(dtype)
    return obj


def _sample_hw(net_cfg, vae_factor: int, cfg: dict) -> tuple[int, int]:
    if cfg.get("resolution"):
        r = cfg["resolution"]
        h, w = (r, r) if isinstance(r, int) else tuple(r)
        return int(h) // vae_factor, int(w) // vae_factor
    s = net_cfg.get("sample_size")
    if s is None:
        raise ConfigError("the network config has no sample_size; set model.resolution (image pixels)")
    return (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))


def _class_condition(net, cfg: dict, scale: float) -> ConditionSpec:
    nc = net.config
    if nc.get("num_embeds_ada_norm") and nc.get("norm_type", "ada_norm_zero") == "ada_norm_zero":
        n = int(nc["num_embeds_ada_norm"])          # DiT: labels 0..n-1, null label n
        return ConditionSpec("class", n, scale, {"null_label": int(cfg.get("null_label", n))})
    if nc.get("num_class_embeds"):
        extra = {"null_label": int(cfg["null_label"])} if cfg.get("null_label") is not None else {}
        return ConditionSpec("class", int(nc["num_class_embeds"]), scale, extra)
    return ConditionSpec()


def build(cfg: dict, ctx) -> Denoiser:
    """``model.kind: diffusers`` builder (see the module docstring for the keys)."""
    require("diffusers")
    cfg = dict(cfg)
    root = resolve_model_dir(cfg, allow_download=bool(getattr(ctx, "allow_download", False)))
    dtype = parse_dtype(cfg.get("dtype"))
    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    sched_over = cfg.get("scheduler") or {}
    schedule, prediction, time_input, time_scale = schedule_from_scheduler_config(
        read_scheduler_config(root, dict(sched_over)), cfg)
    scale = float(cfg.get("guidance_scale", 1.0))

    prompt_encoder = None
    if any(k in index for k in ("text_encoder_2", "text_encoder_3")):
        pipe_cls = str(index.get("_class_name", ""))
        if not pipe_cls.startswith("StableDiffusion3"):
            raise ConfigError(f"pipeline {pipe_cls or '?'} in {root} is not supported yet (text models: Stable "
                              "Diffusion 1.x/2.x and 3); load its network with model.kind=flow or a _target_ model")
        pipe = _load_pipeline(root, index, dtype, cfg)
        net, vae = pipe.transformer, pipe.vae
        prompt_encoder = PipelinePromptEncoder(pipe, int(cfg.get("max_sequence_length", 256)))
    else:
        net_folder = component_folder(root, NETWORK_COMPONENTS, index)
        if net_folder is None and not (root / "config.json").is_file():
            raise ConfigError(f"{root} has neither unet/ nor transformer/ nor a top-level config.json; "
                              "is it a diffusers model directory?")
        net = load_component(root, net_folder, index, dtype, cfg)
        vae_folder = component_folder(root, VAE_COMPONENTS, index)
        vae = load_component(root, vae_folder, index, dtype, cfg) if vae_folder else None
        if component_folder(root, ("text_encoder",), index):
            tokenizer = load_component(root, "tokenizer", index, None, cfg)
            text_encoder = load_component(root, "text_encoder", index, dtype, cfg)
            prompt_encoder = ClipPromptEncoder(tokenizer, text_encoder)

    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    h, w = _sample_hw(net.config, factor, cfg)
    shape = (int(net.config.in_channels), h, w)
    image_shape = (int(vae.config.out_channels), h * factor, w * factor) if vae is not None else shape
    vae_scaling = float(cfg.get("vae_scaling_factor") or (vae.config.get("scaling_factor") if vae is not None else 1.0)
                        or 1.0)
    vae_shift = float((vae.config.get("shift_factor") if vae is not None else 0.0) or 0.0)

    prompts = None
    if prompt_encoder is not None:
        prompts = PromptBank.from_config(cfg)
        if prompts is None:
            raise ConfigError("a text-to-image model needs prompts: set model.prompts=[...] or "
                              "model.prompts_file=<prompts .txt or COCO captions .json>")
        condition = ConditionSpec("text", 0, scale, {"null_prompt": NULL_PROMPT})
    else:
        condition = _class_condition(net, cfg, scale)

    denoiser = DiffusersDenoiser(
        net, schedule, prediction, shape, time_input=time_input, time_scale=time_scale, vae=vae,
        vae_scaling=vae_scaling, vae_shift=vae_shift, image_shape=image_shape, condition=condition,
        prompts=prompts, prompt_encoder=prompt_encoder, net_dtype=dtype or next(net.parameters()).dtype,
        name=str(cfg.get("name") or root.name), decode_batch_size=int(cfg.get("decode_batch_size", 16)),
        prompt_cache=int(cfg.get("prompt_cache", 64)))
    return with_guidance(denoiser, scale)


def with_guidance(denoiser: DiffusersDenoiser, scale: float) -> Denoiser:
    """Wrap in :class:`CFGDenoiser` when ``scale != 1``; refuse where there is no unconditional input."""
    if scale == 1.0:
        return denoiser
    spec = denoiser.condition
    if spec.kind == "none":
        raise ConfigError(f"model.guidance_scale={scale} needs a conditional model; '{denoiser.name}' is "
                          "unconditional (set model.guidance_scale=1)")
    if spec.kind == "class" and "null_label" not in spec.extra:
        raise ConfigError(f"model '{denoiser.name}' has no null class label for guidance; set model.null_label "
                          "or model.guidance_scale=1")
    return CFGDenoiser(denoiser, scale, denoiser.null_condition)


def _load_pipeline(root: Path, index: dict, dtype: torch.dtype | None, cfg: dict):
    diffusers = require("diffusers")
    require("transformers")
    kwargs: dict = {"local_files_only": True}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if cfg.get("variant"):
        kwargs["variant"] = cfg["variant"]
    for name, entry in index.items():        # components saved as null or not downloaded (e.g. SD3's T5)
        if isinstance(entry, (list, tuple)) and (entry[0] is None or not (root / name).is_dir()):
            kwargs[name] = None
    if cfg.get("t5") is False:               # SD3 without its T5 encoder (zeros in its place)
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    try:
        return diffusers.DiffusionPipeline.from_pretrained(str(root), **kwargs)
    except OSError as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingFileError(f"cannot load the pipeline in {root} ({detail}); the directory is incomplete: "
                               f"{fetch_instructions(cfg, root)}") from e
