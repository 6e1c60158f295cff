"""The model of the reliability suite, loaded by the CLI through ``model=custom model._target_=...``.

:class:`GaussianWithFaults` is the exact Gaussian denoiser of
:class:`ld3_cli.models.examples.GaussianDenoiser` (a teacher, a learned schedule and samples exist
for it, cheaply) with two faults that are set from the environment, so they never enter the
model's config or its store key (a faulty run and a clean run share their artifacts):

* ``LD3_TEST_PACE=<seconds>``: sleep that long in every network call, so a subprocess runs long
  enough to be interrupted (read at each call; outputs never change).
* ``LD3_TEST_FAULT=<value>@<when>:<after>`` (read when the model is built): from the
  ``after + 1``-th call of one kind on, every output entry is ``value`` (``nan`` or ``inf``).
  ``when=grad`` counts calls made with autograd on (the trainer's student forward pass; teacher
  sampling, validation and sampling run under ``no_grad``), ``when=nograd`` the others.
"""
from __future__ import annotations

import os
import time

import torch

from ld3_cli.models.examples import GaussianDenoiser

PACE_ENV = "LD3_TEST_PACE"
FAULT_ENV = "LD3_TEST_FAULT"


def fault_spec(value: str, when: str, after: int) -> str:
    """The ``LD3_TEST_FAULT`` value for a fault (see the module docstring)."""
    return f"{value}@{when}:{int(after)}"


class GaussianWithFaults(GaussianDenoiser):
    name = "gaussian_with_faults"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fault = None
        self.calls = 0
        spec = os.environ.get(FAULT_ENV, "")
        if spec:
            value, rest = spec.split("@")
            when, after = rest.split(":")
            if when not in ("grad", "nograd"):
                raise ValueError(f"{FAULT_ENV}: when must be grad or nograd, got {when!r}")
            self.fault = (float(value), when == "grad", int(after))

    def forward(self, x, sigma, cond=None):
        pace = float(os.environ.get(PACE_ENV) or 0.0)
        if pace > 0:
            time.sleep(pace)
        out = super().forward(x, sigma, cond)
        if self.fault is not None:
            value, grad, after = self.fault
            if torch.is_grad_enabled() == grad:
                self.calls += 1
                if self.calls > after:
                    return out * 0 + value  # keeps the autograd graph; every entry nan / inf
        return out
