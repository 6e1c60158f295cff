"""FID Inception from a local weights file: layout and outputs equal pytorch-fid's InceptionV3."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_fid import inception as pfid_inception

from ld3_cli.errors import ConfigError, MissingFileError, UnsafeCheckpointError
from ld3_cli.metrics import FID_WEIGHTS_URL, InceptionFeatures, inception_weights_available
from ld3_cli.metrics import inception as inception_module
from ld3_cli.metrics.inception import FID_WEIGHTS_FILENAME
from ld3_test_helpers import random_fid_state_dict as _random_fid_state_dict


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = _random_fid_state_dict()
    path = tmp_path_factory.mktemp("fid") / "inception.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def images():
    """Two uint8 HWC images; the second is gray (R = G = B)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 40, 36, 3), dtype=np.uint8)
    x[1] = x[1, :, :, :1]
    return x


@pytest.fixture(scope="module")
def small_input():
    """Run the network at 75x75 (Inception's smallest input) instead of 299x299: 16x cheaper on CPU.

    Every layer and weight is exercised as at 299; the 299 resize itself is checked separately
    (test_preprocessing_equals_pytorch_fid).
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inception_module, "INPUT_SIZE", 75)
        yield 75


@pytest.fixture(scope="module")
def ours(weights, images, small_input):
    path, _ = weights
    feats = InceptionFeatures(weights_path=path, device="cpu", batch_size=1)  # chunked: 2 chunks
    return feats, feats(images)


@pytest.fixture(scope="module")
def theirs(weights):
    """pytorch-fid's own InceptionV3([3]) with its download replaced by the test's state dict."""
    _, state = weights
    calls = []

    def fake_download(url, *args, **kwargs):
        calls.append(url)
        return {k: v.clone() for k, v in state.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pfid_inception, "load_state_dict_from_url", fake_download)
        model = pfid_inception.InceptionV3([3], use_fid_inception=True).eval()
    assert calls == [FID_WEIGHTS_URL]
    return model


def _to_unit(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's ToTensor


def test_features_equal_pytorch_fid(images, ours, theirs, small_input):
    _, u8_features = ours
    x = F.interpolate(_to_unit(images), size=(small_input, small_input), mode="bilinear", align_corners=False)
    theirs.resize_input = False
    try:
        with torch.no_grad():
            ref = theirs(x)[0].flatten(1)
    finally:
        theirs.resize_input = True
    assert u8_features.shape == (2, 2048) and u8_features.dtype == torch.float32
    assert ref.std() > 1e-2  # the random network is not degenerate
    assert (ref[0] - ref[1]).abs().max() > 1e-3
    torch.testing.assert_close(u8_features, ref, rtol=1e-5, atol=1e-5)


class _Captured(Exception):
    pass


def _network_input(module, trunk, x):
    """What ``module(x)`` feeds into ``trunk`` (its preprocessing), without running the network."""
    seen = []

    def hook(_mod, args):
        seen.append(args[0].detach().clone())
        raise _Captured

    handle = trunk.register_forward_pre_hook(hook)
    try:
        with torch.no_grad(), pytest.raises(_Captured):
            module(x)
    finally:
        handle.remove()
    return seen[0]


def test_preprocessing_equals_pytorch_fid(images, ours, theirs, monkeypatch):
    """At 299x299: uint8 -> [0, 1] -> bilinear resize -> [-1, 1] is pytorch-fid's, bit for bit."""
    monkeypatch.setattr(inception_module, "INPUT_SIZE", 299)
    feats, _ = ours
    got = _network_input(feats, feats.model.layers, images[1:])
    expected = _network_input(theirs, theirs.blocks[0], _to_unit(images[1:]))
    assert got.shape == (1, 3, 299, 299)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_float_gray_input(images, ours):
    """Float [-1, 1] NCHW with one channel: mapped to [0, 1] and repeated to RGB inside."""
    feats, u8_features = ours
    gray = torch.from_numpy(images[1:, :, :, :1]).permute(0, 3, 1, 2).double() / 127.5 - 1.0  # [1, 1, H, W]
    torch.testing.assert_close(feats(gray.float()), u8_features[1:], rtol=1e-4, atol=1e-5)


def test_loads_from_torch_hub_cache(weights, tmp_path, monkeypatch):
    path, state = weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert not inception_weights_available()
    with pytest.raises(MissingFileError) as err:
        InceptionFeatures(device="cpu")
    expected_path = tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_FILENAME
    assert FID_WEIGHTS_URL in str(err.value) and str(expected_path) in str(err.value)
    expected_path.parent.mkdir(parents=True)
    expected_path.symlink_to(path)
    assert inception_weights_available()
    loaded = InceptionFeatures(device="cpu").model.state_dict()
    conv = loaded["layers.0.conv.weight"]
    assert torch.equal(conv, state["Conv2d_1a_3x3.conv.weight"])
    assert torch.equal(loaded["layers.17.branch_pool.bn.running_var"], state["Mixed_7c.branch_pool.bn.running_var"])


class _NotAWeight:
    pass


def test_bad_weight_files(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(ConfigError, match="FID Inception weights"):
        InceptionFeatures(weights_path=wrong, device="cpu")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"x": _NotAWeight()}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="plain tensors"):
        InceptionFeatures(weights_path=unsafe, device="cpu")
