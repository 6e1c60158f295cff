"""The embedded default model: an exact Gaussian-mixture denoiser fitted to MNIST-5k.

Fit (deterministic): one component per digit class k with weight ``pi_k`` = class frequency,
mean ``mu_k`` = class mean and covariance

    Sigma_k = U_k diag(l_k) U_k^T + v_k (I - U_k U_k^T)

where ``(l_k, U_k)`` are the top ``rank`` eigenpairs of the class covariance and ``v_k`` the
mean of its remaining eigenvalues (the isotropic remainder).  Data live in ``[-1, 1]``,
flattened to ``d = 784``.

Denoiser (exact posterior mean for every sigma): with ``y_k = x - mu_k``, ``p_k = U_k^T y_k``,
``a_k = 1 / (l_k + sigma^2)`` (per eigen-direction) and ``b_k = 1 / (v_k + sigma^2)``,

    log N(x; mu_k, Sigma_k + sigma^2 I) = -1/2 [ sum a p^2 + b (|y|^2 - |p|^2)
                                                - sum log a - (d - r) log b + d log 2 pi ]
    E[x0 | x, k] = x - sigma^2 [ b y_k + U_k ((a_k - b_k) p_k) ]
    D(x, sigma)  = sum_k w_k(x) E[x0 | x, k],   w = softmax_k(log pi_k + log N(...))

All in the ``rank``-dimensional subspaces plus the isotropic remainder: two matrix products
of size ``B x d x (K r)`` per call.  A class label ``cond`` selects one component, the null label ``K``
keeps the whole mixture; so ``model.conditional=true model.guidance_scale=s`` is classifier-free guidance
computed exactly, ``D_u + s (D_c - D_u)`` with ``D_u`` the unconditional mixture (a guided test bed whose
solver error is measured against the exact guided ODE).  The model also draws exact samples of its own
distribution (the ground truth for pure solver error; guidance has no such closed-form distribution).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..data.mnist5k import SHAPE, load_mnist5k
from ..errors import ConfigError
from ..schedules.noise import EDM
from .base import ConditionSpec, Denoiser
from .guidance import CFGDenoiser

FIT_VERSION = 1


def fit_mixture(images: torch.Tensor, labels: torch.Tensor, rank: int) -> dict[str, torch.Tensor]:
    """Fit the per-class low-rank-plus-isotropic Gaussians (float64). Returns the parameter tensors."""
    x = images.reshape(images.shape[0], -1).to(torch.float64)
    d = x.shape[1]
    if not 1 <= rank < d:
        raise ConfigError(f"model.rank must be in [1, {d - 1}], got {rank}")
    classes = torch.unique(labels)
    mus, us, ls, vs, pis = [], [], [], [], []
    for k in classes.tolist():
        xk = x[labels == k]
        mu = xk.mean(0)
        cov = torch.cov((xk - mu).T)  # unbiased, d x d
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        evals = evals.flip(0).clamp_min(0.0)
        evecs = evecs.flip(1)
        mus.append(mu)
        us.append(evecs[:, :rank])
        ls.append(evals[:rank])
        vs.append(evals[rank:].mean().clamp_min(1e-8))
        pis.append(torch.tensor(xk.shape[0] / x.shape[0], dtype=torch.float64))
    return {"mu": torch.stack(mus), "U": torch.stack(us), "lam": torch.stack(ls), "v": torch.stack(vs),
            "pi": torch.stack(pis), "classes": classes.to(torch.int64)}


class GaussianMixtureDenoiser(Denoiser):
    """Exact denoiser of a mixture of low-rank-plus-isotropic Gaussians (see module docstring).

    Args:
        params: output of :func:`fit_mixture` (``mu [K,d]``, ``U [K,d,r]``, ``lam [K,r]``, ``v [K]``, ``pi [K]``).
        shape: ``(C, H, W)`` with ``C*H*W = d``.
        conditional: if True the model expects class labels and ``condition.kind == "class"``.
        sigma_min, sigma_max: the sampling range (EDM schedule).
        dtype: compute dtype (float32 default; float64 for exactness tests).
    """

    name = "mnist_gmm"

    def __init__(self, params: dict, shape=SHAPE, conditional: bool = False, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, dtype: torch.dtype = torch.float32):
        super().__init__()
        K, d, r = params["U"].shape
        if math.prod(shape) != d:
            raise ConfigError(f"mixture dimension {d} does not match shape {shape}")
        self.shape = tuple(shape)
        self.schedule = EDM(sigma_min, sigma_max)
        self.condition = ConditionSpec("class", num_classes=K) if conditional else ConditionSpec()
        self.K, self.d, self.r = K, d, r
        self.null_label = K  # the condition "no class": the unconditional mixture (classifier-free guidance's)
        self.register_buffer("mu", params["mu"].to(dtype))
        self.register_buffer("U", params["U"].to(dtype))
        self.register_buffer("U_flat", params["U"].permute(1, 0, 2).reshape(d, K * r).to(dtype).contiguous())
        self.register_buffer("lam", params["lam"].to(dtype))
        self.register_buffer("v", params["v"].to(dtype))
        self.register_buffer("log_pi", params["pi"].log().to(dtype))
        self.register_buffer("mu_proj", torch.einsum("kd,kdr->kr", params["mu"], params["U"]).to(dtype))
        self.register_buffer("mu_sq", (params["mu"] ** 2).sum(-1).to(dtype))

    def _posterior(self, x: torch.Tensor, sigma: torch.Tensor):
        """Return (log-weights [B,K], projections p [B,K,r], a [B,K,r], b [B,K])."""
        B = x.shape[0]
        xf = x.reshape(B, self.d)
        s2 = (sigma.to(x.dtype) ** 2).reshape(B, 1)
        p = (xf @ self.U_flat).reshape(B, self.K, self.r) - self.mu_proj  # U_k^T (x - mu_k)
        y_sq = (xf * xf).sum(-1, keepdim=True) - 2 * xf @ self.mu.T + self.mu_sq  # |x - mu_k|^2
        a = 1.0 / (self.lam + s2[:, :, None])  # [B,K,r]
        b = 1.0 / (self.v + s2)  # [B,K]
        p_sq = p * p
        quad = (a * p_sq).sum(-1) + b * (y_sq - p_sq.sum(-1)).clamp_min(0)
        logdet = -torch.log(a).sum(-1) - (self.d - self.r) * torch.log(b)
        logits = self.log_pi - 0.5 * (quad + logdet)
        return logits, p, a, b

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        B = x.shape[0]
        sigma = sigma.reshape(-1).expand(B) if sigma.numel() == 1 else sigma.reshape(B)
        logits, p, a, b = self._posterior(x, sigma)
        w = torch.softmax(logits, dim=-1)  # the posterior responsibilities: the unconditional mixture
        if cond is not None:  # a label selects its component; the null label K keeps the whole mixture
            labels = cond.to(x.device).long()
            null = labels == self.null_label
            one = torch.nn.functional.one_hot(torch.where(null, 0, labels), self.K).to(x.dtype)
            w = torch.where(null[:, None], w, one)
        xf = x.reshape(B, self.d)
        c = w * b  # [B,K]
        # sum_k w_k b_k (x - mu_k) + sum_k w_k U_k ((a_k - b_k) p_k)
        lin = c.sum(-1, keepdim=True) * xf - c @ self.mu
        q = (w[:, :, None] * (a - b[:, :, None]) * p).reshape(B, self.K * self.r)
        corr = lin + q @ self.U_flat.T
        s2 = (sigma.to(x.dtype) ** 2).reshape(B, 1)
        return (xf - s2 * corr).reshape_as(x)

    def log_weights(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Posterior log-responsibilities ``[B, K]`` (normalised)."""
        logits, *_ = self._posterior(x, sigma.reshape(-1).expand(x.shape[0]))
        return torch.log_softmax(logits, -1)

    @torch.no_grad()
    def sample_exact(self, n: int, generator: Optional[torch.Generator] = None,
                     labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` exact samples ``[n, C, H, W]`` (and their components) from the fitted mixture."""
        dev, dt = self.mu.device, self.mu.dtype
        if labels is None:
            labels = torch.multinomial(self.log_pi.exp().double().cpu(), n, replacement=True, generator=generator)
        labels = labels.to(dev)
        z1 = torch.randn(n, self.r, generator=generator, dtype=torch.float64).to(dev, dt)
        z2 = torch.randn(n, self.d, generator=generator, dtype=torch.float64).to(dev, dt)
        x0 = torch.empty(n, self.d, dtype=dt, device=dev)
        for k in range(self.K):  # per component: two small matrix products
            idx = (labels == k).nonzero().flatten()
            if idx.numel() == 0:
                continue
            U = self.U[k]
            zk = z2[idx]
            in_sub = (self.lam[k].clamp_min(0).sqrt() * z1[idx]) @ U.T
            perp = zk - (zk @ U) @ U.T
            x0[idx] = self.mu[k] + in_sub + self.v[k].sqrt() * perp
        return x0.reshape(n, *self.shape), labels

    def component_covariance(self, k: int) -> torch.Tensor:
        """Dense ``Sigma_k`` ``[d, d]`` (for tests and diagnostics)."""
        U, lam, v = self.U[k], self.lam[k], self.v[k]
        return U @ torch.diag(lam - v) @ U.T + v * torch.eye(self.d, dtype=U.dtype, device=U.device)


def build(cfg: dict, ctx) -> GaussianMixtureDenoiser:
    """Builder for ``model.kind=mnist_gmm`` (options: rank, conditional, sigma_min, sigma_max, dtype).

    The fit is made once through ``ctx.cache`` when the build context has one (the stages' store keeps
    it under ``<cache>/mnist_gmm/fit/<key>/``).
    """
    rank = int(cfg.get("rank", 128))
    dtype = {"float32": torch.float32, "float64": torch.float64}.get(str(cfg.get("dtype", "float32")))
    if dtype is None:
        raise ConfigError(f"model.dtype must be float32 or float64, got {cfg.get('dtype')}")
    conditional, scale = bool(cfg.get("conditional", False)), float(cfg.get("guidance_scale", 1.0))
    if scale != 1.0 and not conditional:
        raise ConfigError(f"model.guidance_scale={scale:g} guides a class-conditional mixture: add "
                          "model.conditional=true (or set model.guidance_scale=1)")
    params = load_or_fit(rank, getattr(ctx, "cache", None))
    model = GaussianMixtureDenoiser(params, conditional=conditional, sigma_min=float(cfg.get("sigma_min", 0.002)),
                                    sigma_max=float(cfg.get("sigma_max", 80.0)), dtype=dtype)
    # exact guidance: D_u + s (D_c - D_u), with D_u the unconditional mixture's own denoiser (null label K)
    return model if scale == 1.0 else CFGDenoiser(model, scale, uncond=model.null_label)


def load_or_fit(rank: int, cache: Optional[Callable[..., dict]] = None) -> dict:
    """The mixture fitted to MNIST-5k; made once through ``cache`` when given, else fitted now.

    ``cache(owner, fields, compute, expected) -> tensors`` keeps what ``compute()`` returns under
    ``owner`` and ``fields`` (e.g. :meth:`ld3_cli.store.Store.fit_cache`).
    """
    def fit() -> dict:
        images, labels = load_mnist5k()
        return fit_mixture(images, labels, rank)

    if cache is None:
        return fit()
    fields = {"dataset": "mnist5k", "rank": rank, "fit_version": FIT_VERSION}
    d = math.prod(SHAPE)
    return cache("mnist_gmm", fields, fit, {"mu": (None, d), "U": (None, d, rank), "lam": (None, rank), "v": (None,),
                                            "pi": (None,)})
