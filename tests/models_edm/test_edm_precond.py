"""EDM preconditioners against their closed forms, with a stub network that records its inputs."""
from __future__ import annotations

import math

import edm_testlib as lib
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.models.base import Denoiser
from ld3_cli.models.edm.precond import EDMPrecond, VEPrecond, VPPrecond, iDDPMPrecond
from ld3_cli.schedules.noise import EDM, VPLinear

_TINY = {"model_channels": 8, "channel_mult": [1], "num_blocks": 1, "attn_resolutions": []}
TINY_SONG = {"model_type": "SongUNet", **_TINY}
TINY_ADM = {"model_type": "DhariwalUNet", **_TINY}


class Stub(torch.nn.Module):
    """F(x_in, c_noise, labels) = 0.5 * x_in + 0.1 * c_noise (per sample); records what it was given."""

    def __init__(self, out_factor: int = 1):
        super().__init__()
        self.out_factor = out_factor
        self.calls = []

    def forward(self, x, noise_labels, class_labels=None):
        self.calls.append((x.clone(), noise_labels.clone(), None if class_labels is None else class_labels.clone()))
        f = 0.5 * x + 0.1 * noise_labels.reshape(-1, 1, 1, 1)
        return torch.cat([f] * self.out_factor, dim=1) if self.out_factor > 1 else f


def _with_stub(net, out_factor=1):
    net.model = Stub(out_factor)
    return net


def _inputs(b=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 4, 4, generator=g), torch.tensor([0.002, 0.7, 80.0])


def test_vp_coefficients_match_closed_form_and_vplinear_time():
    net = _with_stub(VPPrecond(img_resolution=4, img_channels=3, **TINY_SONG))
    x, sigma = _inputs()
    d = net(x, sigma)
    x_in, c_noise, labels = net.model.calls[-1]
    s = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(x_in, x / torch.sqrt(1 + s ** 2), atol=1e-6)
    # c_noise = (M - 1) t(sigma); t from ld3's independent VP-linear schedule with beta_max = beta_min + beta_d
    # (EDM evaluates log(1 + sigma^2) in float32, as during training: ~1% off at sigma = 0.002)
    t = VPLinear(beta_min=0.1, beta_max=20.0).t(sigma.double())
    assert torch.allclose(c_noise.double()[1:], 999 * t[1:], rtol=1e-5)
    assert c_noise[0].item() == pytest.approx(999 * t[0].item(), rel=2e-2)
    assert labels is None
    f = 0.5 * x_in + 0.1 * c_noise.reshape(-1, 1, 1, 1)
    assert torch.allclose(d, x - s * f, atol=1e-5)  # c_skip = 1, c_out = -sigma


def test_vp_sigma_range_and_schedule():
    net = VPPrecond(img_resolution=4, img_channels=3, **TINY_SONG)
    assert net.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)))
    assert net.sigma_max == pytest.approx(math.sqrt(math.expm1(10.05)))
    assert net.sigma_inv(torch.tensor(net.sigma_max)).item() == pytest.approx(1.0, rel=1e-5)
    assert isinstance(net.schedule, EDM)
    assert (net.schedule.sigma_min, net.schedule.sigma_max) == (0.002, 80.0)
    assert net.shape == (3, 4, 4) and isinstance(net, Denoiser) and not net.condition.conditional
    assert torch.equal(net.decode(torch.ones(1, 3, 4, 4)), torch.ones(1, 3, 4, 4))


def test_ve_coefficients_and_range():
    net = _with_stub(VEPrecond(img_resolution=4, img_channels=3, **TINY_SONG))
    x, sigma = _inputs()
    d = net(x, sigma)
    x_in, c_noise, _ = net.model.calls[-1]
    assert torch.equal(x_in, x)
    assert torch.allclose(c_noise, torch.log(sigma / 2), atol=1e-6)
    f = 0.5 * x + 0.1 * c_noise.reshape(-1, 1, 1, 1)
    assert torch.allclose(d, x + sigma.reshape(-1, 1, 1, 1) * f, atol=1e-4)
    assert (net.schedule.sigma_min, net.schedule.sigma_max) == (0.02, 80.0)


def test_edm_coefficients_closed_form():
    net = _with_stub(EDMPrecond(img_resolution=4, img_channels=3, sigma_data=0.5, **TINY_ADM))
    x, sigma = _inputs()
    d = net(x, sigma)
    x_in, c_noise, _ = net.model.calls[-1]
    s, sd = sigma.reshape(-1, 1, 1, 1), 0.5
    assert torch.allclose(x_in, x / torch.sqrt(s ** 2 + sd ** 2), atol=1e-6)
    assert torch.allclose(c_noise, torch.log(sigma) / 4, atol=1e-6)
    f = 0.5 * x_in + 0.1 * c_noise.reshape(-1, 1, 1, 1)
    expect = sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / torch.sqrt(s ** 2 + sd ** 2) * f
    assert torch.allclose(d, expect, atol=1e-5)
    assert (net.schedule.sigma_min, net.schedule.sigma_max) == (0.002, 80.0)


def test_iddpm_levels_and_discrete_noise_labels():
    net = _with_stub(iDDPMPrecond(img_resolution=4, img_channels=3, M=1000, **TINY_ADM), out_factor=2)
    u = net.u
    assert u.shape == (1001,) and u[1000] == 0 and bool(torch.all(u[:-1] > u[1:]))
    # u_{j-1}^2 + 1 = (u_j^2 + 1) / max(alpha_bar(j-1) / alpha_bar(j), C_1)
    def ab(j):
        return math.sin(0.5 * math.pi * j / 1000 / 1.008) ** 2
    for j in (1, 500, 1000):
        assert float(u[j - 1]) == pytest.approx(math.sqrt((float(u[j]) ** 2 + 1) / max(ab(j - 1) / ab(j), 1e-3) - 1),
                                                rel=2e-3)  # u is accumulated in float32, as in EDM
    x = torch.randn(3, 3, 4, 4)
    sigma = torch.stack([u[10], u[500] * 1.0001, u[998]])
    d = net(x, sigma)
    _, c_noise, _ = net.model.calls[-1]
    assert c_noise.tolist() == [989.0, 499.0, 1.0]
    f = 0.5 * x / torch.sqrt(1 + sigma.reshape(-1, 1, 1, 1) ** 2) + 0.1 * c_noise.reshape(-1, 1, 1, 1)
    assert torch.allclose(d, x - sigma.reshape(-1, 1, 1, 1) * f, atol=1e-4)  # variance channels dropped
    assert net.schedule.sigma_min == pytest.approx(float(u[999])) and net.schedule.sigma_max == 80.0


def test_class_labels_become_one_hot_and_none_becomes_zeros():
    net = _with_stub(VPPrecond(img_resolution=4, img_channels=3, label_dim=10, **TINY_SONG))
    assert net.condition.kind == "class" and net.condition.num_classes == 10
    x, sigma = _inputs()
    net(x, sigma, torch.tensor([0, 9, 4]))
    labels = net.model.calls[-1][2]
    assert labels.dtype == torch.float32 and labels.shape == (3, 10)
    assert labels.argmax(1).tolist() == [0, 9, 4] and labels.sum().item() == 3
    net(x, sigma, None)
    assert torch.equal(net.model.calls[-1][2], torch.zeros(3, 10))
    soft = torch.full((3, 10), 0.1)
    net(x, sigma, soft)
    assert torch.equal(net.model.calls[-1][2], soft)
    with pytest.raises(ConfigError, match=r"\[0, 10\)"):
        net(x, sigma, torch.tensor([0, 10, 1]))
    draws = net.draw_conditions(torch.arange(50))
    assert draws.min() >= 0 and draws.max() < 10


def test_dtype_scalar_sigma_and_fp16_flag_on_cpu():
    net = _with_stub(VPPrecond(img_resolution=4, img_channels=3, use_fp16=True, **TINY_SONG))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    d = net(x, torch.tensor(1.5))
    x_in, c_noise, _ = net.model.calls[-1]
    assert d.dtype == torch.float64 and d.shape == x.shape
    assert x_in.dtype == torch.float32  # float16 only on CUDA
    assert c_noise.shape == (2,) and c_noise[0] == c_noise[1]
    d2 = net(x, torch.full((2,), 1.5))
    assert torch.allclose(d, d2)


def test_denoiser_is_differentiable_in_x_and_sigma():
    torch.manual_seed(0)
    net = VPPrecond(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
                    num_blocks=1, attn_resolutions=[4], dropout=0.1).eval().requires_grad_(False)
    for p in net.parameters():  # make the zero-initialised output layers matter
        p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 8, 8)
    sigma = torch.tensor([0.8], requires_grad=True)
    loss = net(x, sigma).square().sum()
    (g,) = torch.autograd.grad(loss, sigma)
    h = 3e-4  # the random network oscillates fast in sigma; a small step resolves it (float32 round-off ~1e-4)
    with torch.no_grad():
        fd = (net(x, torch.tensor([0.8 + h])).square().sum() - net(x, torch.tensor([0.8 - h])).square().sum()) / (2 * h)
    assert g.item() == pytest.approx(fd.item(), rel=1e-2)


@pytest.mark.parametrize("case", ["ddpmpp_vp_cond", "adm_edm_cond"])
def test_float16_network_branch_matches_float32(case, monkeypatch):
    """The branch use_fp16 takes on CUDA (forced here on CPU): float16 network, float32 coefficients and output."""
    net, kwargs = lib.build_tiny(case)
    x, sigma = lib.probe_input(), torch.tensor(lib.PROBE_SIGMAS)
    labels = lib.probe_labels(kwargs["label_dim"])
    with torch.no_grad():
        ref = net(x, sigma, labels)
        seen = []
        net.model.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
        monkeypatch.setattr(net, "network_dtype", lambda _x: torch.float16)
        out = net(x, sigma, labels)
    assert seen == [(torch.float16, torch.float16)] and out.dtype == torch.float32
    skip = net.coefficients(sigma.reshape(-1, 1, 1, 1))[0] * x
    err = ((out - skip) - (ref - skip)).abs().max() / (ref - skip).abs().max()
    assert 0 < err < 5e-3
