"""ld3's learned sampler with k-diffusion's sampler signature (torch only; k-diffusion itself is not needed).

``ld3 export`` writes this file beside ``schedule.json`` and ``ld3_sampler.py``.  With the folder on
``sys.path``::

    from ld3_kdiffusion import SIGMAS, sample_ld3
    x = torch.randn(16, *shape) * SIGMAS[0]
    x0 = sample_ld3(model, x, SIGMAS)               # anywhere a k_diffusion.sampling.sample_* goes

``model(x, sigma * s_in, **extra_args) -> denoised`` is k-diffusion's denoiser convention (EDM sigma-space:
``x = x0 + sigma * noise``; ``CompVisDenoiser`` & co. wrap DDPM-type networks).  The run is exactly what ld3
learned -- the decoupled evaluation times and scales and, for a learned solver, its coefficients -- so the
network is called at ``sigmas_eval``, not at the grid itself.  ``sigmas`` must be the exported grid
(:data:`SIGMAS`, float32 or float64): the schedule was learned for it, and another list is refused.
``callback`` receives k-diffusion's dict (``x``, ``i``, ``sigma``, ``sigma_hat``, ``denoised``) once per step.

:func:`make_sampler` binds another export's ``schedule.json`` to the same signature (for more than one export in a
process: importing ``ld3_kdiffusion`` from a second folder reuses the first, cached module).
"""
from __future__ import annotations

from pathlib import Path

import torch

try:
    from . import ld3_sampler
except ImportError:  # the export folder itself is on sys.path
    import ld3_sampler

GRID_RTOL = 1e-6  # float32 copies of the grid are accepted


def _progress(n: int, disable):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        return None
    return tqdm(total=n, disable=disable)


def check_sigmas(record: dict, sigmas) -> None:
    """Refuse a sigma list other than the exported grid, naming both."""
    grid = record["sigmas"]
    given = [float(v) for v in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    if record.get("to_zero") and len(given) == len(grid) + 1 and given[-1] == 0:
        given = given[:-1]  # a stock-sampler schedule's own list (ending with 0) is the same run
    same = len(given) == len(grid) and all(abs(g - e) <= GRID_RTOL * abs(e) for g, e in zip(given, grid))
    if not same:
        shown = ", ".join(f"{v:.6g}" for v in given[:6]) + (", ..." if len(given) > 6 else "")
        raise ValueError(f"sample_ld3 runs the schedule ld3 learned, on its own grid of {len(grid)} sigmas "
                         f"({grid[0]:.6g} .. {grid[-1]:.6g}); it was given {len(given)} values ({shown}). Pass "
                         "SIGMAS from this module (or the `sigmas` of schedule.json); for a sigma list of your "
                         "own use a stock k-diffusion sampler")


def make_sampler(record_or_path=None):
    """``sample_ld3(model, x, sigmas, extra_args=None, callback=None, disable=None)`` for an export (a record
    dict, ``schedule.json`` or its folder; default: the export beside this file)."""
    record = record_or_path if isinstance(record_or_path, dict) else ld3_sampler.load_schedule(record_or_path)
    ld3_sampler.check_record(record)

    @torch.no_grad()
    def sample_ld3(model, x, sigmas, extra_args=None, callback=None, disable=None):
        check_sigmas(record, sigmas)
        extra_args = {} if extra_args is None else extra_args
        run = ld3_sampler.LD3Run(record, x)
        bar = _progress(run.evaluations, disable)

        def step_callback(i, x_i, denoised):
            if callback is not None:
                sigma = run.grid.sigmas[i]
                callback({"x": x_i, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

        while not run.done:
            x_in, sigma = run.network_input()
            run.advance(model(x_in, sigma, **extra_args), step_callback)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return run.result

    sample_ld3.record = record
    return sample_ld3


def _here():
    try:
        return ld3_sampler.load_schedule(Path(__file__).resolve().parent)
    except FileNotFoundError:  # imported from ld3's source tree, not from an export folder
        return None


_RECORD = _here()
SIGMAS = None if _RECORD is None else torch.tensor(_RECORD["sigmas"], dtype=torch.float32)


def sample_ld3(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The export beside this file, run as a k-diffusion sampler (see the module docstring)."""
    if _RECORD is None:
        raise FileNotFoundError("no schedule.json beside ld3_kdiffusion.py; use make_sampler(path_to_export)")
    return _DEFAULT(model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable)


_DEFAULT = None if _RECORD is None else make_sampler(_RECORD)
