"""Learned solver coefficients: corrections on top of a base solver's own multistep table.

For a base table (:class:`~ld3_cli.solvers.multistep.MultistepCoefficients`, recomputed from the current
time steps at every forward, so steps and coefficients can be learned together) the learned solver uses

    P[i, j] = P_base[i, j] + b_i * dP[i, j]          C[i, j] = C_base[i, j] + b_i * dC[i, j]

for every history slot step ``i`` has (``j < i``; the base solver's warm-up and lower-order final steps
use fewer, the learned one may use all, and ``coefficient_history`` may give it more than the solver's
order).  ``dP`` / ``dC`` start at zero, so the learned solver *is* the
base solver at initialisation, and they are relative to the step's own weight ``b_i`` so one learning
rate serves data-form (``b = 1 - sigma_{i+1}/sigma_i``) and noise-form (``b = sigma_{i+1} - sigma_i``)
solvers alike.  The weights multiply history *differences* ``F_{i-j} - F_i``, so the weights on the
network outputs always sum to ``b_i``: a constant denoiser stays exact (the S4S-style free weights drop
this; ld3 keeps it by default).

``constraint`` (``train.coefficient_constraint``) says which lead weights ``b_i`` are learned too, as relative
corrections ``b_i (1 + l_i)``: none (``True``), every step's (``False``), or the last step's only (``"last"``).
For a noise-form solver ``"last"`` is DyWeight's family when the time steps are learned as well (a data-form step's
state weight ``sigma_{i+1} / sigma_i`` does not follow a moved time): its rule that a step's weight sum ``s_i``
moves the time the step reaches (``sigma~_{i+1} = sigma~_i + s_i (sigma_{i+1} - sigma~_i)``) makes every step but
the last a sum-keeping combination on the moved grid ``sigma~``, and the last one's sum is free.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Union

import torch
from torch import nn

from ..solvers.multistep import MultistepCoefficients

CONSTRAINTS = (True, False, "last")  # which lead weights stay the base solver's: all, none, all but the last


class CoefficientParameterization(nn.Module):
    """Zero-initialised corrections ``dP [N, K - 1]`` (and ``dC [N - 1, K]`` with a corrector) for ``n_steps``
    steps of history ``K``, and ``l`` (``[N]``, ``[1]`` or none) of the lead weights ``constraint`` frees (module
    docstring)."""

    def __init__(self, n_steps: int, history: int, corrector: bool, constraint: Union[bool, str] = True):
        super().__init__()
        k = max(int(history), 1)
        self.n_steps, self.history = int(n_steps), k
        self.pred = nn.Parameter(torch.zeros(n_steps, k - 1, dtype=torch.float64))
        # a freed lead weight: a constant denoiser is no longer exact on that step
        freed = {True: 0, False: n_steps, "last": 1}[constraint]
        self.lead = nn.Parameter(torch.zeros(freed, dtype=torch.float64)) if freed else None
        self.corr = nn.Parameter(torch.zeros(max(n_steps - 1, 0), k, dtype=torch.float64)) if corrector else None
        steps = torch.arange(n_steps).view(-1, 1)
        # slot j (column j, history difference j + 1) exists at step i when j < i; the corrector's column 0 always
        self.register_buffer("pred_mask", (torch.arange(k - 1).view(1, -1) < steps).to(torch.float64))
        self.register_buffer("corr_mask", torch.cat([torch.ones(max(n_steps - 1, 0), 1), (
            torch.arange(k - 1).view(1, -1) < steps[:-1]).to(torch.float64)], 1).to(torch.float64))

    @classmethod
    def for_table(cls, base: MultistepCoefficients, history: int = 0,
                  constraint: Union[bool, str] = True) -> "CoefficientParameterization":
        """Corrections for ``base`` letting each step combine up to ``history`` network outputs (0: all earlier
        ones; never fewer than the base solver's own, its order)."""
        k = base.steps if int(history) == 0 else int(history)
        return cls(base.steps, max(k, base.history), base.corr is not None, constraint)

    def parameters_list(self) -> list:
        return [p for p in (self.pred, self.corr, self.lead) if p is not None]

    def apply(self, base: MultistepCoefficients) -> MultistepCoefficients:
        """The learned table on ``base`` (differentiable in the corrections and in ``base``)."""
        full = base.widen(self.history).full()
        b = base.b.unsqueeze(1)
        pred = full.pred + b * self.pred.to(b) * self.pred_mask.to(b)
        corr = full.corr
        if self.corr is not None and corr is not None:
            corr = corr + b[:-1] * self.corr.to(b) * self.corr_mask.to(b)
        lead = full.b
        if self.lead is not None:  # the freed lead weights are the last len(lead) steps'
            free = self.lead.numel()
            lead = torch.cat([full.b[:-free], full.b[-free:] * (1 + self.lead.to(b))])
        return replace(full, b=lead, pred=pred, corr=corr)

    @torch.no_grad()
    def magnitude(self) -> float:
        """Largest correction relative to the step weight (0 at initialisation)."""
        return max((float(p.abs().max()) for p in self.parameters_list() if p.numel()), default=0.0)
