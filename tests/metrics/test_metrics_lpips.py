"""LPIPS from local backbone weights equals lpips.LPIPS(pretrained=True) given the same backbone."""
import types

import lpips
import pytest
import torch
import torch.nn.functional as F
import torchvision
from lpips import pretrained_networks

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.metrics import BACKBONES, build_lpips, default_backbone_path, lpips_available

_FEATURES = {
    "vgg": lambda: torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]),
    "alex": lambda: torchvision.models.AlexNet().features,
}
_TV_NAME = {"vgg": "vgg16", "alex": "alexnet"}


def _random_backbone(net, seed=0):
    """torchvision-layout state dict ``features.{i}.*`` with random weights (classifier omitted)."""
    torch.manual_seed(seed)
    features = _FEATURES[net]()
    for m in features.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
            torch.nn.init.normal_(m.bias, std=0.1)
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def _reference_lpips(monkeypatch, net, state):
    """lpips' own pretrained LPIPS, its torchvision download replaced by the test's weights."""
    def fake_torchvision(pretrained=False, **kwargs):
        assert pretrained  # lpips asks for ImageNet weights; give it the test's instead
        features = _FEATURES[net]()
        features.load_state_dict({k[len("features."):]: v for k, v in state.items()})
        return types.SimpleNamespace(features=features)

    monkeypatch.setattr(pretrained_networks.tv, _TV_NAME[net], fake_torchvision)
    return lpips.LPIPS(net=net, pretrained=True, verbose=False).eval()


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_equals_lpips_with_same_backbone(net, tmp_path, monkeypatch):
    state = _random_backbone(net)
    path = tmp_path / BACKBONES[net][0]
    torch.save(state, path)
    ours = build_lpips(net, backbone_weights=path, device="cpu")
    ref = _reference_lpips(monkeypatch, net, state)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 36, 32, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    d = ours(a, b)
    with torch.no_grad():
        expected = ref(a, b).flatten()
    assert d.shape == (2,)
    assert (expected > 1e-4).all()
    torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-7)
    if net == "vgg":  # the preprocessing below is net-independent; alex runs it faster
        return
    assert torch.allclose(ours(a, a), torch.zeros(2), atol=1e-6)
    # gray and tiny images: repeated to RGB and upsampled to 32x32 before the network
    g1, g2 = a[:, :1, :20, :24], b[:, :1, :20, :24]
    up = [F.interpolate(x.repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear", align_corners=False) for x in (g1, g2)]
    with torch.no_grad():
        expected_small = ref(*up).flatten()
    torch.testing.assert_close(ours(g1, g2), expected_small, rtol=1e-5, atol=1e-7)


def test_gradients_flow_and_stays_eval(tmp_path):
    path = tmp_path / "alex.pth"
    torch.save(_random_backbone("alex"), path)
    ours = build_lpips("alex", backbone_weights=path, device="cpu")
    ours.train()
    assert not ours.training and not ours.model.lin0.model[0].training  # heads' dropout stays off
    a = torch.zeros(2, 3, 32, 32, requires_grad=True)
    b = torch.rand(2, 3, 32, 32) * 2 - 1
    first = ours(a, b)
    first.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert torch.equal(first.detach(), ours(a, b).detach())  # deterministic (no dropout)
    assert all(not p.requires_grad for p in ours.parameters())


def test_missing_and_wrong_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not lpips_available("vgg")
    expected_path = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert default_backbone_path("vgg") == expected_path
    with pytest.raises(MissingFileError) as err:
        build_lpips("vgg", device="cpu")
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in str(err.value)
    assert str(expected_path) in str(err.value)
    alex_path = default_backbone_path("alex")
    alex_path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(1)}, alex_path)
    assert lpips_available("alex")
    with pytest.raises(ConfigError, match="features.0.weight"):
        build_lpips("alex", device="cpu")
    with pytest.raises(ConfigError, match="unknown LPIPS network"):
        build_lpips("resnet", device="cpu")
