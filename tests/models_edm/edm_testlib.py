"""Test helpers: tiny EDM architectures, deterministic weights, and pickles with EDM's persistent structure.

``edm_style_pickle`` writes what NVlabs/EDM's training loop writes -- a dict ``{'ema': net, ...}``
whose network objects reduce to ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {type, version, module_src, module_name, class_name, state}`` and ``state`` the object's
``__dict__`` plus ``_init_args``/``_init_kwargs`` -- from *our* modules.  The fake ``torch_utils`` and
``dnnlib`` modules exist in ``sys.modules`` only while the pickle is written.
"""
from __future__ import annotations

import contextlib
import copy
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch


# name -> (precond class name, EDM constructor arguments); tiny versions of each public architecture
_IMG = {"img_resolution": 8, "img_channels": 3}
_SONG = {**_IMG, "model_type": "SongUNet", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
         "attn_resolutions": [4]}
_ADM = {**_IMG, "model_type": "DhariwalUNet", "model_channels": 32, "channel_mult": [1, 2], "num_blocks": 1,
        "attn_resolutions": [4]}
TINY_CASES = {
    "ddpmpp_vp": ("VPPrecond", {**_SONG, "label_dim": 0, "augment_dim": 9, "dropout": 0.13,
                                "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
                                "channel_mult_noise": 1, "resample_filter": [1, 1]}),
    "ddpmpp_vp_cond": ("VPPrecond", {**_SONG, "label_dim": 10, "augment_dim": 9, "dropout": 0.13}),
    "ncsnpp_ve": ("VEPrecond", {**_SONG, "label_dim": 0, "channel_mult": [1, 2, 2], "embedding_type": "fourier",
                                "encoder_type": "residual", "decoder_type": "standard", "channel_mult_noise": 2,
                                "resample_filter": [1, 3, 3, 1]}),
    "songunet_skip_edm": ("EDMPrecond", {**_SONG, "label_dim": 0, "attn_resolutions": [8], "encoder_type": "skip",
                                         "decoder_type": "skip"}),
    "adm_edm_cond": ("EDMPrecond", {**_ADM, "label_dim": 5}),
    "adm_iddpm": ("iDDPMPrecond", {**_ADM, "label_dim": 0}),
}

# reference probe: inputs shared by tests and tests/models_edm/make_edm_reference.py
PROBE_SIGMAS = [0.05, 5.0]
PROBE_LABELS = [1, 3]


def probe_input(batch: int = 2, res: int = 8) -> torch.Tensor:
    return torch.randn(batch, 3, res, res, generator=torch.Generator().manual_seed(1)) * 2


def fill_deterministic(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Overwrite every learnable tensor with seeded noise (key-sorted order, so any implementation with the same
    state-dict keys gets the same values); fixed buffers (resample filters, iDDPM levels) are kept."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in sorted(net.state_dict().items()):
            if k.endswith("resample_filter") or k == "u":
                continue
            scale = 0.5 if v.dim() <= 1 else 1.0 / max(1, v[0].numel()) ** 0.5
            v.copy_(torch.randn(v.shape, generator=g) * scale)
    return net.eval().requires_grad_(False)


def probe_labels(label_dim: int):
    return torch.tensor(PROBE_LABELS) if label_dim else None


# ------------------------------------------------------------------------------------------
# EDM-structured pickles


class _Persistent:
    """Pickles like an EDM persistent object: REDUCE(_reconstruct_persistent_obj, (meta,))."""

    def __init__(self, reconstruct, meta):
        self._reconstruct, self._meta = reconstruct, meta

    def __reduce__(self):
        return self._reconstruct, (self._meta,)


@contextlib.contextmanager
def fake_edm_modules():
    """Temporarily registers ``torch_utils.persistence`` and ``dnnlib.util`` so pickle can name their globals."""
    tu, pers = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, dnu = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called: the test only writes pickles with it
        raise AssertionError("the fake persistence hook must not run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    tu.persistence = pers
    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    dnu.EasyDict = easy
    dn.util, dn.EasyDict = dnu, easy
    names = {"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn, "dnnlib.util": dnu}
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        yield pers._reconstruct_persistent_obj, easy
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _persistent_tree(module: torch.nn.Module, reconstruct, module_src: str, init_kwargs=None, extra_state=None):
    """Our module -> EDM-like persistent stand-in (recursively; ModuleDicts stay plain torch containers)."""
    children = OrderedDict()
    for name, child in module._modules.items():
        if child is None:
            children[name] = None
        elif isinstance(child, torch.nn.ModuleDict):
            md = torch.nn.ModuleDict()
            md.__dict__["_modules"] = OrderedDict(
                (k, _persistent_tree(m, reconstruct, module_src)) for k, m in child._modules.items())
            children[name] = md
        else:
            kw = None
            if name == "model" and init_kwargs is not None:  # the network inside a precond
                kw = {k: v for k, v in init_kwargs.items()
                      if k not in ("img_channels", "use_fp16", "beta_d", "beta_min", "M", "epsilon_t", "model_type",
                                   "sigma_min", "sigma_max", "sigma_data", "C_1", "C_2")}
            children[name] = _persistent_tree(child, reconstruct, module_src, kw)
    state = dict(module.__dict__)
    state.pop("_compiled_call_impl", None)
    for k in ("schedule", "condition"):  # ld3-only attributes EDM does not have
        state.pop(k, None)
    state["_modules"] = children
    if "skip_scale" in state:  # EDM stores numpy scalars in some attributes
        state["skip_scale"] = np.float64(state["skip_scale"])
    state["_init_args"] = ()
    state["_init_kwargs"] = copy.deepcopy(init_kwargs) if init_kwargs is not None else {}
    state.update(extra_state or {})
    meta = {"type": "class", "version": 6, "module_src": module_src, "module_name": "training.networks",
                "class_name": type(module).__name__, "state": state}
    return _Persistent(reconstruct, meta)


def edm_style_pickle(net: torch.nn.Module, init_kwargs: dict, module_src: str = "# source of training/networks.py\n",
                     extra=None, ema_key: str = "ema", protocol: int = 4) -> bytes:
    """Bytes of an EDM network-snapshot pickle holding ``net`` (one of our precond modules)."""
    with fake_edm_modules() as (reconstruct, easy):
        ema = _persistent_tree(net, reconstruct, module_src, init_kwargs)
        data = {ema_key: ema, "loss_fn": None, "augment_pipe": None,
                "dataset_kwargs": easy(path="datasets/x.zip", resolution=8)}
        data.update(extra or {})
        return pickle.dumps(data, protocol=protocol)


def build_tiny(case: str, seed: int = 1):
    """Our precond network for a TINY_CASES entry with deterministic non-trivial weights."""
    from ld3_cli.models.edm.precond import PRECONDS

    precond, kwargs = TINY_CASES[case]
    torch.manual_seed(0)
    return fill_deterministic(PRECONDS[precond](**copy.deepcopy(kwargs)), seed), kwargs
