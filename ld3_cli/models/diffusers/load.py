"""Building a :class:`DiffusersDenoiser` from ``model.*`` (``model.kind: diffusers``; keys in the package docstring)."""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import ConfigError, MissingFileError
from ..base import ConditionSpec, Denoiser
from ..guidance import CFGDenoiser
from ..prompts import NULL_PROMPT, PromptBank
from .denoiser import DiffusersDenoiser
from .encoders import ClipPromptEncoder, PipelinePromptEncoder
from .locate import (INSTALL_HINT, NETWORK_COMPONENTS, VAE_COMPONENTS, component_folder, fetch_instructions, read_json,
                     require, resolve_model_dir)
from .scheduler import read_scheduler_config, schedule_from_scheduler_config

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


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


def load_component(root: Path, folder: str | None, index: dict, dtype: torch.dtype | None, cfg: dict):
    """``from_pretrained`` one component (local files only); the class comes from model_index.json or
    the component's config.json (``_class_name`` for diffusers, ``architectures`` for transformers)."""
    where = root / folder if folder else root
    lib, cls_name = None, None
    if folder and isinstance(index.get(folder), (list, tuple)):
        lib, cls_name = index[folder][0], index[folder][1]
    conf_path = where / "config.json"
    conf = read_json(conf_path) if conf_path.is_file() else {}
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
    """``model.kind: diffusers`` builder (see the package docstring for the keys)."""
    require("diffusers")
    cfg = dict(cfg)
    root = resolve_model_dir(cfg, allow_download=bool(getattr(ctx, "allow_download", False)))
    dtype = parse_dtype(cfg.get("dtype"))
    index = read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    schedule, prediction, time_input, time_scale = schedule_from_scheduler_config(
        read_scheduler_config(root, dict(cfg.get("scheduler") or {})), cfg)
    scale = float(cfg.get("guidance_scale", 1.0))
    net, vae, prompt_encoder = _load_modules(root, index, dtype, cfg)
    geometry = _geometry(net, vae, cfg)
    prompts, condition = _conditioning(net, prompt_encoder, cfg, scale)
    denoiser = DiffusersDenoiser(
        net, schedule, prediction, geometry.pop("shape"), time_input=time_input, time_scale=time_scale, vae=vae,
        condition=condition, prompts=prompts, prompt_encoder=prompt_encoder,
        net_dtype=dtype or next(net.parameters()).dtype, name=str(cfg.get("name") or root.name),
        decode_batch_size=int(cfg.get("decode_batch_size", 16)), prompt_cache=int(cfg.get("prompt_cache", 64)),
        **geometry)
    return with_guidance(denoiser, scale)


def _load_modules(root: Path, index: dict, dtype: torch.dtype | None, cfg: dict):
    """``(network, autoencoder or None, prompt encoder or None)`` of the directory."""
    if any(k in index for k in ("text_encoder_2", "text_encoder_3")):
        pipe_cls = str(index.get("_class_name", ""))
        if not pipe_cls.startswith("StableDiffusion3"):
            raise ConfigError(f"pipeline {pipe_cls or '?'} in {root} is not supported yet (text models: Stable "
                              "Diffusion 1.x/2.x and 3); load its network with model.kind=flow or a _target_ model")
        pipe = _load_pipeline(root, index, dtype, cfg)
        return pipe.transformer, pipe.vae, PipelinePromptEncoder(pipe, int(cfg.get("max_sequence_length", 256)))
    net_folder = component_folder(root, NETWORK_COMPONENTS, index)
    if net_folder is None and not (root / "config.json").is_file():
        raise ConfigError(f"{root} has neither unet/ nor transformer/ nor a top-level config.json; "
                          "is it a diffusers model directory?")
    net = load_component(root, net_folder, index, dtype, cfg)
    vae_folder = component_folder(root, VAE_COMPONENTS, index)
    vae = load_component(root, vae_folder, index, dtype, cfg) if vae_folder else None
    prompt_encoder = None
    if component_folder(root, ("text_encoder",), index):
        tokenizer = load_component(root, "tokenizer", index, None, cfg)
        text_encoder = load_component(root, "text_encoder", index, dtype, cfg)
        prompt_encoder = ClipPromptEncoder(tokenizer, text_encoder)
    return net, vae, prompt_encoder


def _geometry(net, vae, cfg: dict) -> dict:
    """``shape`` (the state: latents for latent models), ``image_shape`` and the autoencoder's scaling."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    h, w = _sample_hw(net.config, factor, cfg)
    shape = (int(net.config.in_channels), h, w)
    image_shape = (int(vae.config.out_channels), h * factor, w * factor) if vae is not None else shape
    vae_scaling = float(cfg.get("vae_scaling_factor") or (vae.config.get("scaling_factor") if vae is not None else 1.0)
                        or 1.0)
    vae_shift = float((vae.config.get("shift_factor") if vae is not None else 0.0) or 0.0)
    return {"shape": shape, "image_shape": image_shape, "vae_scaling": vae_scaling, "vae_shift": vae_shift}


def _conditioning(net, prompt_encoder, cfg: dict, scale: float) -> tuple[PromptBank | None, ConditionSpec]:
    """The prompts (text models) and the condition spec."""
    if prompt_encoder is None:
        return None, _class_condition(net, cfg, scale)
    prompts = PromptBank.from_config(cfg)
    if prompts is None:
        raise ConfigError("a text-to-image model needs prompts: set model.prompts=[...] or "
                          "model.prompts_file=<prompts .txt or COCO captions .json>")
    return prompts, ConditionSpec("text", 0, scale, {"null_prompt": NULL_PROMPT})


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
