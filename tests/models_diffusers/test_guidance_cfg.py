"""CFGDenoiser: the guidance formula, one batched call, scale 1 / 0 shortcuts, class and embedding conditions."""
from __future__ import annotations

import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.models.base import ConditionSpec, Denoiser
from ld3_cli.models.guidance import CFGDenoiser, cat_conditions, null_condition
from ld3_cli.schedules.noise import EDM


class ClassGaussian(Denoiser):
    """Exact denoiser of x0 ~ N(mu_c, v) given class c (mu of the null class = 0); counts calls and batch sizes."""

    def __init__(self, n_classes=3, var=0.5, shape=(2, 3, 3)):
        super().__init__()
        self.schedule, self.shape, self.var = EDM(), shape, var
        self.condition = ConditionSpec("class", n_classes, 1.0, {"null_label": n_classes})
        g = torch.Generator().manual_seed(0)
        mus = torch.randn(n_classes, *shape, generator=g, dtype=torch.float64)
        self.register_buffer("mus", torch.cat([mus, torch.zeros(1, *shape, dtype=torch.float64)]))
        self.calls = []

    def forward(self, x, sigma, cond=None):
        self.calls.append(x.shape[0])
        mu = self.mus[cond]
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return mu + self.var / (self.var + s2) * (x - mu)


class EmbeddingLinear(Denoiser):
    """Toy text model: D = x / (1 + sigma^2) + mean over tokens of the embedding (broadcast to the image)."""

    def __init__(self):
        super().__init__()
        self.schedule, self.shape = EDM(), (4, 2, 2)
        self.condition = ConditionSpec("text")
        self.calls = []

    def forward(self, x, sigma, cond=None):
        emb = cond["emb"] if isinstance(cond, dict) else cond
        self.calls.append(x.shape[0])
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2) + emb.mean(1).view(-1, 4, 1, 1)


def _inputs(b=4, shape=(2, 3, 3)):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, *shape, generator=g, dtype=torch.float64) * 3
    sigma = torch.tensor([0.1, 0.7, 2.0, 9.0], dtype=torch.float64)[:b]
    return x, sigma


@pytest.mark.parametrize("scale", [1.5, 4.0, 7.5])
def test_cfg_class_labels_formula_in_one_batched_call(scale):
    inner = ClassGaussian()
    cfg = CFGDenoiser(inner, scale, uncond=3)
    x, sigma = _inputs()
    labels = torch.tensor([0, 1, 2, 1])
    out = cfg(x, sigma, labels)
    assert inner.calls == [8]                                # cond and uncond halves in one call
    d_c = inner(x, sigma, labels)
    d_u = inner(x, sigma, torch.full_like(labels, 3))
    torch.testing.assert_close(out, d_u + scale * (d_c - d_u), rtol=0, atol=1e-12)
    # for Gaussian classes, guided x0 is the posterior mean with a guided prior mean (1-s)*0 + s*mu_c
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    mu_g = scale * inner.mus[labels]
    torch.testing.assert_close(out, mu_g + inner.var / (inner.var + s2) * (x - mu_g), rtol=0, atol=1e-12)


def test_cfg_scale_one_is_conditional_and_skips_uncond_half():
    inner = ClassGaussian()
    x, sigma = _inputs()
    labels = torch.tensor([2, 0, 1, 1])
    out = CFGDenoiser(inner, 1.0, uncond=3)(x, sigma, labels)
    assert inner.calls == [4]
    torch.testing.assert_close(out, inner(x, sigma, labels), rtol=0, atol=0)
    inner.calls.clear()
    out0 = CFGDenoiser(inner, 0.0, uncond=3)(x, sigma, labels)
    assert inner.calls == [4]
    torch.testing.assert_close(out0, inner(x, sigma, torch.full_like(labels, 3)), rtol=0, atol=0)


def test_cfg_text_embeddings_tensor_and_dict_conditions():
    inner = EmbeddingLinear()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.3, 1.0, 5.0])
    emb = torch.randn(3, 5, 4, generator=g)
    null = torch.randn(1, 5, 4, generator=g)
    scale = 7.5
    out = CFGDenoiser(inner, scale, uncond=null)(x, sigma, emb)
    d_c, d_u = inner(x, sigma, emb), inner(x, sigma, null.expand(3, 5, 4))
    torch.testing.assert_close(out, d_u + scale * (d_c - d_u), rtol=1e-6, atol=1e-5)
    # dict conditions with a callable uncond give the same result
    out_d = CFGDenoiser(inner, scale, uncond=lambda c: {"emb": null.expand_as(c["emb"])})(x, sigma, {"emb": emb})
    torch.testing.assert_close(out_d, out, rtol=0, atol=0)


def test_cfg_wrapper_delegates_model_attributes():
    inner = ClassGaussian()
    cfg = CFGDenoiser(inner, 2.0, uncond=3)
    assert cfg.shape == inner.shape and cfg.image_shape == inner.image_shape and cfg.schedule is inner.schedule
    assert cfg.condition.guidance_scale == 2.0 and cfg.condition.num_classes == 3
    assert torch.equal(cfg.draw_conditions(torch.arange(5)), inner.draw_conditions(torch.arange(5)))
    assert cfg.var == inner.var                                 # unknown attributes come from the wrapped model
    assert cfg.describe()["guidance_scale"] == 2.0


def test_null_condition_and_cat_shapes():
    cond = torch.randn(3, 7, 4)
    u = null_condition(torch.zeros(7, 4), cond)
    assert u.shape == cond.shape and torch.all(u == 0)
    with pytest.raises(ConfigError):
        null_condition(torch.zeros(2, 6, 4), cond)
    both = cat_conditions({"a": torch.ones(2, 3), "b": {"c": torch.zeros(2)}}, {"a": torch.zeros(2, 3),
                                                                                "b": {"c": torch.ones(2)}})
    assert both["a"].shape == (4, 3) and torch.equal(both["b"]["c"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ConfigError):
        CFGDenoiser(ClassGaussian(), 3.0, 3)(torch.zeros(1, 2, 3, 3), torch.ones(1), None)
