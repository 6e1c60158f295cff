"""Unconditional diffusers models (pixel DDPM, LDM) through build_model, against manual conversions."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from ld3_cli.models import BuildContext, build_model
from ld3_cli.models.diffusers import alphas_cumprod_from_config
from ld3_cli.schedules.noise import VPDiscrete

pytest.importorskip("diffusers")

T_FRAC = torch.tensor([0.0, 3.25, 37.5, 500.75, 998.5])


def sigma_at(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Independent reference: log sigma interpolated linearly between integer training steps."""
    ac = alphas_cumprod.double()
    ls = 0.5 * torch.log((1 - ac) / ac)
    lo = t.floor().long().clamp(max=len(ac) - 2)
    f = t.double() - lo
    return torch.exp(ls[lo] * (1 - f) + ls[lo + 1] * f)


def _x(shape, seed=0):
    return torch.randn(len(T_FRAC), *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddpm_unet_matches_manual_conversion(ddpm_dir, tmp_path, prediction_type):
    from diffusers import UNet2DModel

    d = tmp_path / "m"
    shutil.copytree(ddpm_dir, d)
    sc_path = d / "scheduler" / "scheduler_config.json"
    sc = json.loads(sc_path.read_text())
    sc["prediction_type"] = prediction_type
    sc_path.write_text(json.dumps(sc))
    model = build_model({"kind": "diffusers", "name": "tiny", "path": str(d)}, BuildContext())
    unet = UNet2DModel.from_pretrained(d / "unet")
    assert model.shape == (3, 8, 8) and model.image_shape == (3, 8, 8) and model.condition.kind == "none"
    assert isinstance(model.schedule, VPDiscrete) and model.schedule.t_max == 999

    sigma = sigma_at(alphas_cumprod_from_config(sc), T_FRAC)
    x = _x((3, 8, 8))
    out = model(x, sigma)
    a = (1 + sigma.double() ** 2).rsqrt().float().view(-1, 1, 1, 1)
    s = sigma.float().view(-1, 1, 1, 1)
    x_t = a * x
    with torch.no_grad():
        net = unet(x_t, T_FRAC).sample
    expected = {"epsilon": x - s * net, "v_prediction": a * x_t - a * s * net, "sample": net}[prediction_type]
    assert net.std() > 0.05                                   # a non-trivial network output
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-5)
    assert model.decode(x) is x                              # pixel model: identity decode


def test_ddpm_native_time_matches_diffusers_alphas_cumprod(ddpm_dir):
    from diffusers import DDPMScheduler

    model = build_model({"kind": "diffusers", "path": str(ddpm_dir)}, BuildContext())
    ref = DDPMScheduler.from_pretrained(ddpm_dir / "scheduler").alphas_cumprod.double()
    t = torch.arange(0, 1000, 37, dtype=torch.float64)
    alpha2 = model.schedule.alpha(t) ** 2
    torch.testing.assert_close(alpha2, ref[t.long()], rtol=2e-6, atol=0)
    sig = sigma_at(ref, T_FRAC)
    torch.testing.assert_close(model.schedule.t(sig), T_FRAC.double(), rtol=0, atol=2e-3)


def test_flat_layout_loads_the_same_model(ddpm_dir, tmp_path):
    """The older google/ddpm-* layout: config.json + weights + scheduler_config.json at the top level."""
    flat = tmp_path / "flat"
    shutil.copytree(ddpm_dir / "unet", flat)
    shutil.copy(ddpm_dir / "scheduler" / "scheduler_config.json", flat / "scheduler_config.json")
    a = build_model({"kind": "diffusers", "path": str(ddpm_dir)}, BuildContext())
    b = build_model({"kind": "diffusers", "path": str(flat)}, BuildContext())
    x, sigma = _x((3, 8, 8)), torch.tensor([0.02, 0.3, 1.0, 4.0, 80.0])
    torch.testing.assert_close(a(x, sigma), b(x, sigma), rtol=0, atol=0)


def test_ldm_vq_latents_and_decode(ldm_dir):
    from diffusers import DDIMScheduler, UNet2DModel, VQModel

    model = build_model({"kind": "diffusers", "path": str(ldm_dir)}, BuildContext())
    vq = VQModel.from_pretrained(ldm_dir / "vqvae")
    unet = UNet2DModel.from_pretrained(ldm_dir / "unet")
    ref = alphas_cumprod_from_config(DDIMScheduler.from_pretrained(ldm_dir / "scheduler").config)
    assert model.shape == (3, 8, 8) and model.image_shape == (3, 16, 16)
    sigma = sigma_at(ref, T_FRAC)
    x = _x((3, 8, 8), 1)
    a = (1 + sigma.double() ** 2).rsqrt().float().view(-1, 1, 1, 1)
    with torch.no_grad():
        expected = x - sigma.float().view(-1, 1, 1, 1) * unet(a * x, T_FRAC).sample
        img = vq.decode(x / vq.config.scaling_factor).sample.clamp(-1, 1)
        img1 = vq.decode(x).sample.clamp(-1, 1)
    torch.testing.assert_close(model(x, sigma), expected, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(model.decode(x), img, rtol=1e-5, atol=1e-5)
    assert model.decode(x).abs().max() <= 1
    # CompVis LDM-VQ models were trained on unscaled latents: model.vae_scaling_factor overrides the config
    unscaled = build_model({"kind": "diffusers", "path": str(ldm_dir), "vae_scaling_factor": 1.0}, BuildContext())
    torch.testing.assert_close(unscaled.decode(x), img1, rtol=1e-5, atol=1e-5)


def test_reduced_precision_network_keeps_a_float32_state(ddpm_dir):
    full = build_model({"kind": "diffusers", "path": str(ddpm_dir)}, BuildContext())
    half = build_model({"kind": "diffusers", "path": str(ddpm_dir), "dtype": "bfloat16"}, BuildContext())
    assert next(half.net.parameters()).dtype == torch.bfloat16 and half.dtype == torch.float32
    x, sigma = _x((3, 8, 8), 2), torch.tensor([0.05, 0.4, 1.0, 3.0, 20.0])
    out = half(x, sigma)
    assert out.dtype == torch.float32
    ref = full(x, sigma)
    # bfloat16 network: eps agrees to ~1e-2, so x0 = x - sigma * eps to ~1e-2 * sigma
    err = ((out - ref) / sigma.view(-1, 1, 1, 1)).abs().max()
    assert 0 < err < 0.1
