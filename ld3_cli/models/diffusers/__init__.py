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

Modules, one concern each: :mod:`.locate` (finding the directory and its components),
:mod:`.scheduler` (scheduler config -> noise schedule), :mod:`.call` (calling a diffusers
network), :mod:`.trees` (tensors and dicts of tensors), :mod:`.encoders` (prompt encoders),
:mod:`.denoiser` (the denoiser and its prompt cache), :mod:`.load` (building it from a config).
"""
from .call import DiffusersCall
from .denoiser import DiffusersDenoiser
from .encoders import ClipPromptEncoder, PipelinePromptEncoder
from .load import build, load_component, parse_dtype, with_guidance
from .locate import require, resolve_model_dir
from .scheduler import alphas_cumprod_from_config, read_scheduler_config, schedule_from_scheduler_config

__all__ = ["ClipPromptEncoder", "DiffusersCall", "DiffusersDenoiser", "PipelinePromptEncoder",
           "alphas_cumprod_from_config", "build", "load_component", "parse_dtype", "read_scheduler_config",
           "require", "resolve_model_dir", "schedule_from_scheduler_config", "with_guidance"]
