"""Build a :class:`~ld3_cli.models.base.Denoiser` from the ``model`` config group.

A model config names either ``kind`` (a builder registered here, imported lazily so optional
dependencies such as diffusers are only needed when used) or ``_target_`` (any importable
class or function, instantiated by Hydra with the remaining keys; it must return a
Denoiser).  Builders have the signature ``build(cfg: dict, ctx: BuildContext) -> Denoiser``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError

# kind -> "module:function"
BUILDERS = {
    "mnist_gmm": "ld3_cli.models.mnist_gmm:build",
    "mnist_ddpm": "ld3_cli.models.mnist_ddpm:build",
    "edm": "ld3_cli.models.edm.loader:build",
    "diffusers": "ld3_cli.models.diffusers:build",
    "flow": "ld3_cli.models.flow:build",
}


@dataclass
class BuildContext:
    """What a builder may use besides its config.

    device: where the model should live.  cache: ``cache(owner, fields, compute, expected=None)
    -> tensors`` keeps data a builder derives (the mixture fit): what ``compute()`` returns is made
    once under ``owner`` and ``fields`` and read back (None: compute every time; the stages pass
    :meth:`ld3_cli.store.Store.fit_cache`).  dataset: the dataset config (plain dict) for models
    fitted to data.  allow_download: whether a missing file may be fetched.
    """

    device: torch.device = torch.device("cpu")
    cache: Optional[Callable[..., dict]] = None
    dataset: Optional[dict] = None
    allow_download: bool = False


def build_model(cfg: dict, ctx: BuildContext):
    """Instantiate the model described by ``cfg`` (a plain dict).

    ``time_rounding`` (any model kind; default ``none``): ``nearest`` rounds a discrete-time network's time to the
    nearest training step, as ComfyUI does (:func:`~ld3_cli.models.adapters.set_time_rounding`).
    """
    cfg = dict(cfg)
    rounding = str(cfg.pop("time_rounding", None) or "none")
    if "_target_" in cfg:
        from hydra.utils import instantiate

        model = instantiate({k: v for k, v in cfg.items() if k not in MODEL_HINT_KEYS})
    else:
        kind = cfg.get("kind")
        if kind not in BUILDERS:
            raise ConfigError(f"model.kind '{kind}' is unknown; choose one of {sorted(BUILDERS)} "
                              "or set model._target_=your_pkg.YourDenoiser")
        mod_name, fn_name = BUILDERS[kind].split(":")
        model = getattr(importlib.import_module(mod_name), fn_name)(cfg, ctx)
    from .base import Denoiser

    if not isinstance(model, Denoiser):
        raise ConfigError(f"model built from {cfg.get('_target_', cfg.get('kind'))} is a {type(model).__name__}, "
                          "not an ld3_cli.models.Denoiser; subclass Denoiser (see README 'Your own model')")
    from .adapters import set_time_rounding

    set_time_rounding(model, rounding)
    return model.to(ctx.device).eval().requires_grad_(False)


# Keys of a model config that tell ld3 how to treat the model (defaults for other groups, where the
# weights come from); they are never passed to a ``_target_`` and never enter the model's store key.
MODEL_HINT_KEYS = {"name", "kind", "url", "file_name", "download", "param", "teacher_discretization",
                   "teacher_nfe", "train_batch_size", "train_iters_phase1", "train_iters_phase2", "train_offset_units",
                   "train_offsets_optimizer", "train_lr_offsets", "train_rho_gradient", "train_steps_rates_offsets",
                   "train_restarts", "ays_family", "notes"}
