"""Tensors and (nested) dicts of tensors, batch-first: the conditions a diffusers network takes."""
from __future__ import annotations

from typing import Any

import torch


def to_device(obj: Any, device, dtype: torch.dtype | None) -> Any:
    """Move tensors (and dicts of them) to ``device``; floating tensors also to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype if (dtype is not None and obj.is_floating_point()) else obj.dtype)
    if isinstance(obj, dict):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    return obj


def expand(obj: Any, batch: int) -> Any:
    """Broadcast a batch of one to ``batch`` rows (a view)."""
    if isinstance(obj, torch.Tensor):
        return obj.expand(batch, *obj.shape[1:])
    return {k: expand(v, batch) for k, v in obj.items()}


def stack_rows(rows: list) -> Any:
    """Rows (tensors or dicts of them) -> one batch."""
    if isinstance(rows[0], torch.Tensor):
        return torch.stack(rows)
    return {k: stack_rows([r[k] for r in rows]) for k in rows[0]}


def row(obj: Any, i: int) -> Any:
    """Row ``i`` of a batch (a tensor or a dict of them)."""
    if isinstance(obj, torch.Tensor):
        return obj[i]
    return {k: row(v, i) for k, v in obj.items()}
