"""Soft teacher forcing (LD3, Tong et al. 2025, Sec. 3.2).

Each training sample's input noise ``eps'`` (unit variance; the solver starts from
``sigma_max * eps'``) is a free variable kept in the ball ``||eps' - eps|| <= r`` around its
original noise ``eps``, i.e. ``||x'_T - x_T|| <= r sigma_T``.  The default radius is
``r = gamma * d / NFE^2`` with ``d = C*H*W`` and ``gamma = 0.001`` (the paper's choice); ``r = 0``
gives the hard objective.  After each gradient step on ``eps'`` the point is projected back onto
the ball, and the move is kept only for the samples whose loss it lowered.
"""
from __future__ import annotations

from typing import Optional

import torch


def default_radius(gamma: float, dim: int, nfe: int) -> float:
    """``r = gamma * d / NFE^2``."""
    return float(gamma) * float(dim) / float(nfe) ** 2


def default_shift_lr(nfe: int) -> float:
    """Step size of the noise update (the official code uses ``12 / NFE``)."""
    return 12.0 / float(nfe)


def project_to_ball(candidate: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """Project each row of ``candidate`` ``[B, ...]`` onto ``{z : ||z - center|| <= radius}``."""
    diff = (candidate - center).flatten(1)
    norm = diff.norm(dim=1, keepdim=True)
    factor = torch.where(norm > radius, radius / norm.clamp_min(1e-30), torch.ones_like(norm))
    return center + (diff * factor).view_as(candidate)


def propose_move(current: torch.Tensor, grad: Optional[torch.Tensor], center: torch.Tensor, radius: float,
                 lr: float) -> torch.Tensor:
    """One projected gradient step on the noises (no move where there is no gradient)."""
    if grad is None or radius <= 0:
        return current
    return project_to_ball(current - lr * grad, center, radius)


def accept_moves(current: torch.Tensor, proposal: torch.Tensor, new_loss: torch.Tensor,
                 ref_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep ``proposal`` rows whose loss went down; return ``(updated, accepted_mask [B])``."""
    accepted = new_loss < ref_loss
    shape = (-1,) + (1,) * (current.dim() - 1)
    return torch.where(accepted.view(shape), proposal, current), accepted
