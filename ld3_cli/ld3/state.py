"""The LD3 trainer's resumable state: one dataclass, saved and loaded field by field.

:class:`TrainerState` holds everything a training run changes, so a run resumes bit-identically from it.
:func:`encode_state` turns it into ``(tensors, info)``: a flat ``{path: tensor}`` dict (for safetensors) and
JSON-able plain data with one entry per field, by the field's name, plus ``state_format``.
:func:`decode_state` turns that back into a :class:`TrainerState`.  Both walk the fields the same way:

* a tensor goes to ``tensors`` under its path (``field.key.key``); ``info`` keeps ``{"__tensor__": path}``;
* a ``torch.Generator`` goes the same way, as its state tensor (``{"__generator__": path}``);
* a :class:`~ld3_cli.solvers.sampler.Sampler` goes as its own tensors and plain data (``{"__sampler__": ...}``);
* a dict is walked key by key; numbers, strings, booleans and ``None`` stay in ``info`` as they are, and
  so do lists, which hold plain data only (they are copied, not walked).

Encoding only reads the state.  It does not copy the tensors: they stay the live ones, detached.
``info`` is a copy: its dicts and lists are new, and only the items inside lists (the history's
records, which the trainer never changes once appended) are shared.  A state of another format, or
one that lacks a field or a tensor, raises :class:`~ld3_cli.errors.ConfigError`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional

import torch

from ..errors import ConfigError
from ..solvers.sampler import Sampler

STATE_FORMAT = "ld3-trainer-state/2"
FORMAT_KEY = "state_format"
_TENSOR, _GENERATOR, _SAMPLER = "__tensor__", "__generator__", "__sampler__"


@dataclass
class TrainerState:
    """What an :class:`~ld3_cli.ld3.trainer.LD3Trainer` run changes.

    Conventions: learned tensors are named ``steps``, ``offsets``, ``coefficients.<k>``, and the part
    before the first dot is the tensor's group.  Phases are indices into the trainer's ``phases``, and
    ``best_phase == -1`` is the starting schedule.  Losses are means over a split: ``init_val`` and
    ``best_val`` over the validation pairs from their true noises.
    """

    phase_names: list = field(default_factory=list)     # the phase plan this state belongs to
    # the start: LD3Trainer.start fills these, and a state without init_name has not started
    init_name: str = ""                                  # the baseline schedule training started from
    init_val: float = float("inf")                       # its validation loss
    baselines: dict = field(default_factory=dict)        # name -> {"train", "val": loss, "sigmas": list}
    # the learned tensors, and how they move
    params: dict = field(default_factory=dict)           # name -> the learned tensor itself (the live one)
    optimizers: dict = field(default_factory=dict)       # name -> its optimiser's state ("lr", the buffers)
    best_params: dict = field(default_factory=dict)      # name -> a copy at the best validation so far
    best_val: float = float("inf")
    best_phase: int = -1
    # where training is
    phase_index: int = 0                                 # the running phase (len(phases) once done)
    iteration: int = 0                                   # iterations done, all phases together
    phase_iteration: int = 0                             # iterations done in the running phase
    stale_validations: int = 0                           # validations since the last improvement (patience)
    train_noises: Optional[torch.Tensor] = None          # the training noises as soft teacher forcing moved them
    generator: torch.Generator = field(default_factory=torch.Generator)  # draws each epoch's order
    epoch_order: Optional[torch.Tensor] = None           # the running epoch's order of the training pairs
    batch_position: int = 0                              # where the next batch starts in epoch_order
    # records
    history: list = field(default_factory=list)          # one dict per iteration (loss, lr, val, ...)
    phase_ends: dict = field(default_factory=dict)       # ended phase -> {"best_val", "sampler"} at its end
    stopped: str = ""                                    # why training stopped ("" while it runs)
    elapsed: float = 0.0                                 # seconds of training so far, resumed runs included


def encode_state(state: Any) -> tuple[dict, dict]:
    """``(tensors, info)`` of a dataclass state (module docstring); only reads ``state``."""
    tensors: dict = {}
    info: dict = {FORMAT_KEY: STATE_FORMAT}
    for f in fields(state):
        info[f.name] = _encode(getattr(state, f.name), f.name, tensors)
    return tensors, info


def decode_state(tensors: dict, info: dict, cls: type = TrainerState) -> Any:
    """The state that :func:`encode_state` gave ``(tensors, info)`` for (tensors as saved, on the CPU)."""
    if not isinstance(info, dict) or info.get(FORMAT_KEY) != STATE_FORMAT:
        found = info.get(FORMAT_KEY, "none") if isinstance(info, dict) else type(info).__name__
        raise ConfigError(f"the saved training state has format {found}, this ld3 reads {STATE_FORMAT}: it was "
                          "written by another version; delete it to train from the start")
    missing = [f.name for f in fields(cls) if f.name not in info]
    if missing:
        raise ConfigError(f"the saved training state lacks {', '.join(missing)}; delete it to train from the start")
    return cls(**{f.name: _decode(info[f.name], tensors) for f in fields(cls)})


def _encode(value: Any, path: str, tensors: dict) -> Any:
    if isinstance(value, torch.Tensor):
        return {_TENSOR: _put(tensors, path, value.detach())}
    if isinstance(value, torch.Generator):
        return {_GENERATOR: _put(tensors, path, value.get_state())}
    if isinstance(value, Sampler):
        return {_SAMPLER: value.plain(), "tensors": _encode(value.tensors(), path, tensors)}
    if isinstance(value, dict):
        return {str(k): _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"the trainer state cannot hold {path} of type {type(value).__name__}")


def _put(tensors: dict, path: str, t: torch.Tensor) -> str:
    if path in tensors:
        raise ValueError(f"two tensors of the trainer state are both named {path}")
    tensors[path] = t
    return path


def _decode(tree: Any, tensors: dict) -> Any:
    if isinstance(tree, list):
        return list(tree)
    if not isinstance(tree, dict):
        return tree
    if _TENSOR in tree:
        return _get(tensors, tree[_TENSOR])
    if _GENERATOR in tree:
        generator = torch.Generator()
        generator.set_state(_get(tensors, tree[_GENERATOR]))
        return generator
    if _SAMPLER in tree:
        return Sampler.from_tensors(_decode(tree["tensors"], tensors), tree[_SAMPLER])
    return {k: _decode(v, tensors) for k, v in tree.items()}


def _get(tensors: dict, path: str) -> torch.Tensor:
    if path not in tensors:
        raise ConfigError(f"the saved training state lacks its tensor {path}; delete it to train from the start")
    return tensors[path]
