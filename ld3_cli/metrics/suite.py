"""What ``ld3 eval`` measures, by name: the metric suites, their detectors and the table's columns.

* ``fid`` (RGB datasets with reference statistics): pytorch-fid's Inception pool3 features of the
  samples against the dataset's reference statistics;
* ``fd_pixels`` (small / non-RGB data such as MNIST-5k): Frechet distances in pixel space -- never
  called FID -- to exact samples of the model (``fd_exact``) and to the dataset (``fd_data``);
* ``auto``: ``fid`` for RGB images when the dataset names reference statistics, else ``fd_pixels``.

Every suite also reports the teacher distances ``rmse``, ``psnr`` (and ``lpips`` for RGB).
"""
from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

SUITES = ("auto", "fid", "fd_pixels")
DETECTORS = {"fid": "pytorch-fid-inception-v3-pool3", "fd_pixels": "pixels"}
# the columns of the results table, in order (a column is shown when some row has it)
TABLE_METRICS = ("fid", "fd_exact", "fd_data", "rmse", "psnr", "lpips")
HIGHER_IS_BETTER = frozenset({"psnr"})


def check_suite(name: str) -> str:
    """``name`` if it is one of :data:`SUITES`, else a ConfigError naming them."""
    if name not in SUITES:
        raise ConfigError(f"eval.metrics must be {', '.join(SUITES[:-1])} or {SUITES[-1]}; got '{name}'")
    return name


def metric_suite(name: str, image_shape: Callable[[], tuple], has_fid_reference: bool) -> str:
    """The suite ``eval.metrics=name`` runs: ``fid`` or ``fd_pixels``.

    ``image_shape()`` gives the model's images ``(C, H, W)``; it is only called for ``auto`` with a FID
    reference (it may load the model).
    """
    if check_suite(name) != "auto":
        return name
    return "fid" if (has_fid_reference and tuple(image_shape())[0] == 3) else "fd_pixels"
