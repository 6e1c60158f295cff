"""Per-sample distances (closed forms) and image-layout conversion."""
import math

import numpy as np
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.metrics import l1, l2, pseudo_huber, psnr, rmse
from ld3_cli.metrics.images import to_nchw


def test_closed_forms_constant_offset():
    a = torch.rand(4, 3, 8, 8) * 2 - 1
    offsets = torch.tensor([0.0, 0.1, 0.5, 1.0]).view(4, 1, 1, 1)
    b = a + offsets
    off = offsets.flatten().double()
    torch.testing.assert_close(l2(a, b).double(), off ** 2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(l1(a, b).double(), off, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(rmse(a, b).double(), off, rtol=1e-5, atol=1e-6)
    p = psnr(a, b)
    assert p[0] == math.inf
    # PSNR = 20 log10(data_range / rmse), data_range 2 for [-1, 1] images
    torch.testing.assert_close(p[1:].double(), 20 * torch.log10(2.0 / off[1:]), rtol=1e-5, atol=1e-4)
    assert psnr(a, b, data_range=1.0)[1].item() == pytest.approx(20 * math.log10(1.0 / 0.1), abs=1e-3)
    # pseudo-Huber, per-element mean (default): every element differs by `off`
    torch.testing.assert_close(pseudo_huber(a, b).double(), torch.sqrt(off ** 2 + 0.03 ** 2) - 0.03,
                               rtol=1e-5, atol=1e-6)
    d = 3 * 8 * 8
    c = 0.00054 * math.sqrt(d)
    torch.testing.assert_close(pseudo_huber(a, b, c=None).double(), torch.sqrt(off ** 2 + c * c) - c,
                               rtol=1e-5, atol=1e-6)
    # Song & Dhariwal's whole-sample form: |a - b|_2 = sqrt(D) * off
    torch.testing.assert_close(pseudo_huber(a, b, c=None, reduction="norm").double(),
                               torch.sqrt(d * off ** 2 + c * c) - c, rtol=1e-5, atol=1e-6)


def test_pseudo_huber_limits_and_gradients():
    a = torch.zeros(2, 3072, dtype=torch.float64)
    b = torch.zeros(2, 3072, dtype=torch.float64)
    b[0, 0], b[1, 0] = 1e-4, 10.0
    ph = pseudo_huber(a, b, c=None, reduction="norm")  # c = 0.00054 sqrt(3072) = 0.0299...
    c = 0.00054 * math.sqrt(3072)
    assert ph[0].item() == pytest.approx(1e-8 / (2 * c), rel=1e-3)  # quadratic near 0
    assert ph[1].item() == pytest.approx(10.0 - c, rel=1e-5)  # linear far away
    mean_form = pseudo_huber(a, b, c=0.03)  # one element differs; the others contribute 0
    assert mean_form[0].item() == pytest.approx(1e-8 / (2 * 0.03) / 3072, rel=1e-3)
    assert mean_form[1].item() == pytest.approx((math.sqrt(100 + 0.03 ** 2) - 0.03) / 3072, rel=1e-9)
    with pytest.raises(ValueError, match="reduction"):
        pseudo_huber(a, b, reduction="sum")
    x = torch.rand(3, 1, 5, 5, requires_grad=True)
    (l2(x, torch.zeros_like(x)).sum() + pseudo_huber(x, torch.zeros_like(x)).sum()).backward()
    assert x.grad.abs().sum() > 0


def test_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        l2(torch.zeros(2, 3), torch.zeros(2, 4))


def test_to_nchw_layouts():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    unit = to_nchw(u8, "unit")
    assert unit.shape == (2, 3, 5, 4) and unit.dtype == torch.float32
    torch.testing.assert_close(unit, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0, rtol=0, atol=0)
    signed = to_nchw(u8, "signed")
    torch.testing.assert_close(signed, unit * 2 - 1, rtol=0, atol=1e-6)
    # float [-1, 1] input: unit range is (x + 1) / 2, clamped
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5)
    torch.testing.assert_close(to_nchw(x, "unit").flatten(), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    gray = to_nchw(u8[..., :1], "unit", rgb=True)
    assert gray.shape == (2, 3, 5, 4) and torch.equal(gray[:, 0], gray[:, 2])
    torch.testing.assert_close(to_nchw(u8[..., 0], "unit"), unit[:, :1], rtol=0, atol=0)  # [B, H, W] is gray
    with pytest.raises(ConfigError, match="channel-last"):
        to_nchw(u8.transpose(0, 3, 1, 2).copy(), "unit")
    with pytest.raises(ConfigError, match="float images"):
        to_nchw(torch.zeros(2, 5, 4, 3), "unit")
