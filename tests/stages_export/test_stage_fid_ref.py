"""``ld3 fid-ref``: the written statistics equal compute_reference_stats called directly.

A random-weights FID Inception file (the real file's layout) is written by the test; the network
runs at 75x75 instead of 299x299 (its smallest input, 16x cheaper; every layer still runs),
which changes nothing the stage does.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image
from stages_export_helpers import make_ctx

from ld3_cli.errors import ConfigError
from ld3_cli.metrics import InceptionFeatures, compute_reference_stats, load_reference_stats
from ld3_cli.metrics import inception as inception_module
from ld3_cli.stages import fid_ref as fid_ref_stage
from ld3_test_helpers import random_fid_state_dict as _random_fid_state_dict


@pytest.fixture(scope="module")
def small_input():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inception_module, "INPUT_SIZE", 75)
        yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("fidw") / "inception.pth"
    torch.save(_random_fid_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def features(weights, small_input):
    return InceptionFeatures(weights_path=weights, device="cpu", batch_size=250)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Four 20x24 RGB images as a png folder (one in a subfolder) and as an npz (key x)."""
    imgs = np.random.default_rng(0).integers(0, 256, size=(4, 20, 24, 3), dtype=np.uint8)
    root = tmp_path_factory.mktemp("imgs")
    folder = root / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(imgs):
        Image.fromarray(im).save((folder / "sub" if i == 3 else folder) / f"{i:02d}.png")
    np.savez(root / "imgs.npz", x=imgs)
    return imgs, folder, root / "imgs.npz"


@pytest.fixture
def shared_features(features, monkeypatch):
    """Let the stage reuse the module's extractor (building one costs a second); record its arguments."""
    import ld3_cli.metrics as metrics

    calls = []

    def build(weights_path=None, device=None, batch_size=200):
        calls.append({"weights_path": str(weights_path), "device": str(device), "batch_size": batch_size})
        return features

    monkeypatch.setattr(metrics, "InceptionFeatures", build)
    return calls


def _run(store, weights, *overrides):
    ctx = make_ctx("fid-ref", store, [f"eval.inception_weights={weights}", *overrides])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fid_ref_stage.run(ctx)
    return res, buf.getvalue()


def _assert_stats_equal(path, mu, sigma):
    mu2, sigma2 = load_reference_stats(path, dims=2048)
    np.testing.assert_allclose(mu2, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma2, sigma, rtol=1e-10, atol=1e-12)


def test_folder_source(tmp_path, weights, features, images):
    """The stage builds its own extractor here (the real wiring: weights file, device, batch size)."""
    imgs, folder, _ = images
    out = tmp_path / "refs" / "folder.npz"
    res, stdout = _run(tmp_path, weights, f"fid_ref.source={folder}", f"fid_ref.out={out}")
    mu, sigma = compute_reference_stats(folder, features, batch_size=250)
    _assert_stats_equal(out, mu, sigma)
    assert res["n"] == 4 and res["path"] == out
    assert "4 images, mu (2048,), sigma (2048, 2048)" in stdout and stdout.strip().endswith(f"fid-ref: {out}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["folder.npz"]  # atomic: no temporary left
    # png is lossless: the folder's statistics are those of the arrays themselves
    mu_arr, _ = compute_reference_stats(imgs, features, batch_size=250)
    np.testing.assert_allclose(mu, mu_arr, rtol=1e-10, atol=1e-12)


def test_npz_source_first_n(tmp_path, weights, features, shared_features, images):
    imgs, _, npz = images
    out = tmp_path / "n3.npz"
    res, _ = _run(tmp_path, weights, f"fid_ref.source={npz}", f"fid_ref.out={out}", "fid_ref.n=3")
    mu, sigma = compute_reference_stats(imgs[:3], features, batch_size=250)
    _assert_stats_equal(out, mu, sigma)
    assert res["n"] == 3
    assert shared_features == [{"weights_path": str(weights), "device": "cpu", "batch_size": 250}]
    with pytest.raises(ConfigError, match="holds 4 images but 5"):
        _run(tmp_path, weights, f"fid_ref.source={npz}", f"fid_ref.out={tmp_path}/n5.npz", "fid_ref.n=5")
    assert not (tmp_path / "n5.npz").exists()


def test_dataset_source_and_default_out(tmp_path, weights, features, shared_features):
    from ld3_cli.data.mnist5k import load_mnist5k_uint8

    res, _ = _run(tmp_path, weights, "fid_ref.n=3")  # dataset mnist5k: no dataset.fid_ref -> <cache>/refs/
    expected = tmp_path / "refs" / "mnist5k.npz"
    assert res["path"] == expected
    mu, sigma = compute_reference_stats(load_mnist5k_uint8()[:3], features, batch_size=250)  # gray -> RGB
    _assert_stats_equal(expected, mu, sigma)


def test_image_folder_dataset_and_overwrite(tmp_path, weights, features, shared_features, images):
    _, folder, _ = images
    args = ["dataset=image_folder", f"dataset.path={folder}"]
    res, _ = _run(tmp_path, weights, *args)
    expected = tmp_path / "refs" / "image_folder.npz"  # dataset.fid_ref of the image_folder config
    assert res["path"] == expected
    before = expected.read_bytes()
    with pytest.raises(ConfigError, match="already exists.*fid_ref.overwrite=true"):
        _run(tmp_path, weights, *args)
    assert expected.read_bytes() == before
    res, _ = _run(tmp_path, weights, *args, "fid_ref.overwrite=true", "fid_ref.n=2")
    mu, sigma = compute_reference_stats(folder, features, batch_size=250, num_images=2)
    _assert_stats_equal(expected, mu, sigma)


def test_bad_sources(tmp_path, weights):
    (tmp_path / "x.txt").write_text("hello")
    for args, msg in [(["fid_ref.source=" + str(tmp_path / "x.txt")], "neither a folder nor an .npz"),
                      (["dataset=cifar10"], "cifar10-32x32.npz"),
                      (["dataset=image_folder"], "dataset.path=/your/images"),
                      ([f"fid_ref.out={tmp_path}/r.txt"], r"must end in \.npz"),
                      (["fid_ref.n=0"], "fid_ref.n must be >= 1")]:
        with pytest.raises(ConfigError, match=msg):
            _run(tmp_path, weights, *args)
