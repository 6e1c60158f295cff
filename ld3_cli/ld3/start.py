"""Before training: the train / validation split of the teacher pairs and the starting schedule."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..schedules import discretize

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    """One split of the teacher pairs: unit noises ``eps``, teacher images ``y``, conditions ``cond``."""

    eps: torch.Tensor
    y: torch.Tensor
    cond: Optional[torch.Tensor]

    def __len__(self) -> int:
        return int(self.eps.shape[0])

    def rows(self, idx) -> "Pairs":
        return Pairs(self.eps[idx], self.y[idx], self.cond[idx] if self.cond is not None else None)


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """(training, validation) pair counts of ``n`` pairs: ``round(n * val_fraction)`` validate."""
    n_val = int(round(n * val_fraction))
    return n - n_val, n_val


def split_pairs(noises: torch.Tensor, targets: torch.Tensor, cond: Optional[torch.Tensor], val_fraction: float,
                device, dtype) -> tuple[Pairs, Pairs]:
    """(train, validation): the first ``n - round(n * val_fraction)`` pairs train, the rest validate."""
    n = noises.shape[0]
    if targets.shape[0] != n:
        raise ConfigError(f"noises ({n}) and targets ({targets.shape[0]}) differ in count")
    k, n_val = split_sizes(n, val_fraction)
    if n_val < 1 or k < 1:
        raise ConfigError(f"need at least one training and one validation sample; got n={n}, "
                          f"val_fraction={val_fraction}")
    c = cond.to(device) if isinstance(cond, torch.Tensor) else None

    def part(sl):
        return Pairs(noises[sl].to(device, dtype), targets[sl].to(device), c[sl] if c is not None else None)

    return part(slice(0, k)), part(slice(k, n))


def choose_init(score: Callable[[torch.Tensor], tuple[float, float]], schedule, n_steps: int, init: str,
                candidates) -> tuple[str, torch.Tensor, dict]:
    """Score the baselines (``score(sigmas) -> (train loss, validation loss)``) and pick the start.

    ``init="auto"``: the candidate with the lowest *training* loss; else that baseline.  Returns
    ``(name, sigmas, {name: {"train", "val", "sigmas"}})``.
    """
    names = list(candidates) if init == "auto" else [init]
    baselines: dict[str, dict] = {}
    for name in names:
        try:
            sig = discretize(name, n_steps, schedule)
        except ConfigError as e:
            if init != "auto":
                raise
            log.info("baseline %s skipped: %s", name, e)
            continue
        tr, va = score(sig)
        baselines[name] = {"train": tr, "val": va, "sigmas": sig.tolist()}
    if not baselines:
        raise ConfigError(f"no usable initial schedule among {names}")
    best = min(baselines, key=lambda k: baselines[k]["train"])
    return best, torch.as_tensor(baselines[best]["sigmas"], dtype=torch.float64), baselines
