"""FID of an image set: pytorch-fid's Inception pool3 features, Frechet distance to reference statistics."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..errors import MissingArtifactError
from .frechet import FrechetReference, stream_statistics
from .inception import FEATURE_DIM, InceptionFeatures
from .reference import load_reference_stats


def fid_reference(path, url: Optional[str] = None) -> FrechetReference:
    """The reference statistics at ``path``, validated (present, 2048-d, finite); read once per file version
    (so the 2048-d square root of its covariance is also computed once per process).

    A missing file is a MissingArtifactError naming ``url`` (where to download it) or ``ld3 fid-ref``.
    """
    if not path or not Path(str(path)).is_file():
        raise MissingArtifactError(f"FID reference statistics not found at {path}; "
                                   + (f"download {url} there" if url else "make them with `ld3 fid-ref ...`")
                                   + " (or set dataset.fid_ref=/path/to/stats.npz)")
    st = Path(str(path)).stat()
    return _load(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=2)
def _load(path: str, mtime_ns: int, size: int) -> FrechetReference:
    """Read once per file version (eval checks the file first, then scores every schedule against it)."""
    return FrechetReference(*load_reference_stats(path, dims=FEATURE_DIM))


def fid(batches: Iterable[np.ndarray], reference: FrechetReference | tuple[np.ndarray, np.ndarray],
        features: InceptionFeatures, device=None, on_batch=None) -> float:
    """FID of uint8 ``[b, H, W, C]`` image batches against ``reference`` (a FrechetReference or ``(mu, sigma)``)."""
    mu, sigma, _ = stream_statistics(batches, lambda b: features(torch.from_numpy(b)), device=device, on_batch=on_batch)
    ref = reference if isinstance(reference, FrechetReference) else FrechetReference(*reference)
    return ref.distance(mu, sigma)

