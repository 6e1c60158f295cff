"""Frechet distance between Gaussians, and streaming mean / covariance of feature rows.

The Frechet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` is::

    FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1 S2)^(1/2) )

With Inception pool3 features it is the FID; with flattened pixels (:mod:`ld3_cli.metrics.pixel_fd`)
it is the pixel-space Frechet distance of the ``fd_pixels`` suite, which is *not* an FID.

Numerics.  ``S1 S2`` is not symmetric, so a general matrix square root (``scipy.linalg.sqrtm``,
as pytorch-fid uses) can return complex values or fail when the product is near-singular;
pytorch-fid then retries with ``eps`` added to both diagonals.  Here the trace is computed
through the symmetric matrix ``A S1 A`` with ``A = S2^(1/2)``: it is similar to ``S1 S2``
(same eigenvalues), positive semi-definite, and its eigenvalues come from ``eigh`` as real
numbers, so rank-deficient covariances (fewer samples than dimensions) need no offset and
no imaginary part ever appears.  Eigenvalues at rounding level (below ``d * eps * max``,
including tiny negative ones) are set to 0, which makes singular cases exact.
Everything is float64.

Statistics.  :class:`StatsAccumulator` adds batches of feature rows one at a time and keeps
only ``n``, the mean and the centred sum of outer products (Chan et al.'s pairwise update),
so a 50k-sample FID never holds all features and uses exactly the ``n`` rows it was given:
no padding, no division by a rounded-up count.
"""
from __future__ import annotations

import numpy as np
import torch

from ld3_cli.errors import ConfigError, NumericalError


def _clip_rounding(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are below its rounding level (``d * eps * max|w|``).

    Such values are noise (exactly-zero eigenvalues come out as +-1e-16 * |w|max); their square
    roots (~1e-8 * |w|max each) would otherwise add up to a visible error for singular matrices.
    """
    tol = w.shape[0] * np.finfo(np.float64).eps * float(np.abs(w).max(initial=0.0))
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding-level eigenvalues zeroed)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T


def _trace_sqrt_product(sqrt_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """``tr((sigma_a sigma_b)^(1/2))`` for symmetric PSD matrices, via ``eigvalsh(A sigma_b A)`` with
    ``A = sqrt_a = sigma_a^(1/2)``."""
    m = sqrt_a @ sigma_b @ sqrt_a
    m = 0.5 * (m + m.T)
    ev = np.linalg.eigvalsh(m)
    return float(np.sqrt(_clip_rounding(ev)).sum())


def _float64(x, ndmin: int) -> np.ndarray:
    x = np.asarray(_numpy(x), dtype=np.float64)
    return np.atleast_1d(x) if ndmin == 1 else np.atleast_2d(x)


class FrechetReference:
    """The statistics ``N(mu, sigma)`` of a reference set, for many Frechet distances against it.

    ``sigma``'s square root (one ``eigh``, the costly part: ~0.1 s at d = 784, ~1.3 s at d = 2048 on
    one core) is computed on first use and kept, so scoring k schedules against one reference costs one
    ``eigh`` and k ``eigvalsh`` instead of k of each.  ``tr((S1 S2)^(1/2))`` is symmetric in ``S1, S2``,
    so taking the root on the reference side gives the same value (to rounding, ~1e-10 relative).
    """

    def __init__(self, mu, sigma):
        self.mu = _float64(mu, 1)
        sigma = _float64(sigma, 2)
        self.sigma = 0.5 * (sigma + sigma.T) if sigma.ndim == 2 and sigma.shape[0] == sigma.shape[1] else sigma
        self._sqrt: np.ndarray | None = None

    @property
    def sqrt_sigma(self) -> np.ndarray:
        """``sigma^(1/2)`` (symmetric), computed once."""
        if self._sqrt is None:
            self._sqrt = _sqrt_psd(self.sigma)
        return self._sqrt

    def distance(self, mu, sigma, eps: float = 1e-6) -> float:
        """Frechet distance between ``N(mu, sigma)`` and this reference (see :func:`frechet_distance`)."""
        mu1, s1, mu2, s2 = _float64(mu, 1), _float64(sigma, 2), self.mu, self.sigma
        d = mu1.shape[0]
        if mu1.ndim != 1 or mu2.shape != mu1.shape or s1.shape != (d, d) or s2.shape != (d, d):
            raise ConfigError(f"Frechet distance needs mu [d] and sigma [d, d] of one dimension d on both sides, got "
                              f"mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}; compare "
                              "statistics computed with the same feature extractor")
        for name, arr in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
            if not np.isfinite(arr).all():
                raise NumericalError(f"{name} contains NaN or Inf; recompute the statistics (check the images for NaN)")
        s1 = 0.5 * (s1 + s1.T)
        diff = mu1 - mu2
        try:
            tr_covmean = _trace_sqrt_product(self.sqrt_sigma, s1)
        except np.linalg.LinAlgError:
            offset = np.eye(d) * eps
            tr_covmean = _trace_sqrt_product(_sqrt_psd(s2 + offset), s1 + offset)
        fd = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
        return max(fd, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, computed in float64.

    ``mu*``: ``[d]``; ``sigma*``: ``[d, d]`` covariance matrices (symmetrised before use).
    Accepts numpy arrays, tensors or anything ``np.asarray`` takes.  Returns a float >= 0
    (a rounding-level negative result is clipped to 0).  ``eps`` is only used if the
    eigendecomposition fails to converge: it is then retried with ``eps * I`` added to both
    covariances, as pytorch-fid does for a singular product.  To score several sets against one
    reference, use :class:`FrechetReference` (its square root is computed once).
    """
    return FrechetReference(mu2, sigma2).distance(mu1, sigma1, eps)


def _numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


class StatsAccumulator:
    """Streaming mean and unbiased covariance of feature rows, accumulated in float64.

    ``add(batch)`` takes ``[b, d]`` rows (numpy or torch, any float dtype, any device; ``b``
    may be 0).  Accumulation runs in torch float64 on the device of the first batch (or the
    ``device`` given), so GPU features stay on the GPU.  ``mu`` / ``sigma`` return numpy
    float64 ``[d]`` / ``[d, d]`` equal to ``np.mean(X, 0)`` / ``np.cov(X, rowvar=False)``
    (``ddof=1``) of exactly the ``n`` rows added.  ``merge`` combines accumulators of
    disjoint row sets (e.g. one per rank).
    """

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else None
        self.n = 0
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self._mean is None else int(self._mean.shape[0])

    def add(self, batch) -> StatsAccumulator:
        """Add the rows of ``batch`` ``[b, d]``; returns ``self``."""
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
        if x.ndim != 2:
            raise ValueError(f"feature batch must be [b, d], got shape {tuple(x.shape)}")
        if self.device is None:
            self.device = x.device
        x = x.detach().to(device=self.device, dtype=torch.float64)
        if self._mean is not None and x.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature dimension changed from {self._mean.shape[0]} to {x.shape[1]}")
        b = int(x.shape[0])
        if b == 0:
            return self
        if not torch.isfinite(x).all():
            raise NumericalError("features contain NaN or Inf; check the images fed to the feature extractor")
        mean_b = x.mean(dim=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        self._combine(b, mean_b, m2_b)
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if self._mean is None:
            self.n, self._mean, self._m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        n_a = self.n
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def merge(self, other: StatsAccumulator) -> StatsAccumulator:
        """Fold the rows of ``other`` (a disjoint set) into ``self``; returns ``self``."""
        if other.n == 0:
            return self
        if self.device is None:
            self.device = other.device
        if self._mean is not None and other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
        self._combine(other.n, other._mean.to(self.device), other._m2.to(self.device))
        return self

    @property
    def mu(self) -> np.ndarray:
        """Mean of the rows added, float64 ``[d]``."""
        if self.n < 1:
            raise ConfigError("no feature rows were added; the image source is empty")
        return self._mean.cpu().numpy().copy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (``ddof=1``) of the rows added, float64 ``[d, d]``."""
        if self.n < 2:
            raise ConfigError(f"a covariance needs at least 2 feature rows, got {self.n}; use more images")
        s = self._m2 / (self.n - 1)
        return (0.5 * (s + s.T)).cpu().numpy()

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)``."""
        return self.mu, self.sigma


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and unbiased covariance ``[d, d]`` (float64) of the ``n`` rows of ``features`` ``[n, d]``."""
    return StatsAccumulator().add(features).stats()


def stream_statistics(batches, feature_fn, device=None, on_batch=None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu [d], sigma [d, d], n)`` of ``feature_fn(batch)`` rows over ``batches``, streamed.

    ``feature_fn`` maps a batch to ``[b, d]`` features; they accumulate on ``device`` (default:
    that of the first features).  ``on_batch(b)`` is called after each batch (progress bars).
    """
    acc = StatsAccumulator(device=device)
    for batch in batches:
        acc.add(feature_fn(batch))
        if on_batch is not None:
            on_batch(len(batch))
    mu, sigma = acc.stats()
    return mu, sigma, acc.n
