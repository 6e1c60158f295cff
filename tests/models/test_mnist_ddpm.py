"""The real pretrained MNIST DDPM (../shared): loading, sigma-space conversion, its eps error."""
import pytest
import torch

from ld3_cli.data.mnist5k import load_mnist5k
from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.models.mnist_ddpm import MnistDDPM, load_state_dict


@pytest.fixture(scope="module")
def ddpm(ddpm_weights):
    return MnistDDPM(load_state_dict(ddpm_weights)).eval()


def test_eps_error_on_mnist5k_is_as_published(ddpm):
    """SPEC.md: eps-MSE averaged over random steps 1..1000 is 0.017 on the 5,000 digits."""
    x0 = load_mnist5k(2500)[0] / 2  # the checkpoint's data range is [-0.5, 0.5]
    g = torch.Generator().manual_seed(0)
    abar = ddpm.ckpt.alpha_t
    with torch.no_grad():
        i = torch.randint(1, 1001, (2500,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[i].view(-1, 1, 1, 1)
        z = a.sqrt() * x0 + (1 - a).sqrt() * eps
        mse = float(((ddpm.eps(z, i.float()) - eps) ** 2).mean())
    assert mse == pytest.approx(0.017, abs=0.002)


def test_sigma_space_denoiser_equals_the_eps_conversion(ddpm):
    g = torch.Generator().manual_seed(1)
    x0 = load_mnist5k(4)[0] / 2
    eps = torch.randn(x0.shape, generator=g)
    for step in (1, 37, 500, 1000):
        a = ddpm.ckpt.alpha_t[step].double()
        sigma = torch.sqrt((1 - a) / a)
        x = x0 + sigma.float() * eps  # canonical state x = z / sqrt(abar)
        z = x * a.sqrt().float()
        with torch.no_grad():
            got = ddpm(x, sigma.expand(4))
            want = x - sigma.float() * ddpm.eps(z, torch.full((4,), float(step)))
        assert torch.allclose(got, want, atol=2e-5), step
    assert ddpm.schedule.t_min == 1 and ddpm.schedule.t_max == 1000
    assert torch.equal(ddpm.decode(torch.full((1,), 0.5)), torch.ones(1))


def test_missing_and_wrong_files(tmp_path):
    with pytest.raises(MissingFileError, match="ddpm_mnist_starter.pth"):
        load_state_dict(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(3)}, bad)
    with pytest.raises(ConfigError, match="MNIST DDPM layout"):
        MnistDDPM(load_state_dict(bad))
