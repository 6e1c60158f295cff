"""Reference statistics: npz round trips (EDM and pytorch-fid layouts), validation, image sources."""
import numpy as np
import pytest
import torch
from PIL import Image

from ld3_cli.data.images import iter_image_batches
from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.metrics import (
    compute_reference_stats,
    frechet_distance,
    load_reference_stats,
    pixel_statistics,
    pixel_vectors,
    save_reference_stats,
)


def _stats(d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((50, d))
    return x.mean(0), np.cov(x, rowvar=False)


def test_round_trip_ours_and_edm_layout(tmp_path):
    mu, sigma = _stats()
    path = save_reference_stats(tmp_path / "sub" / "ref.npz", mu, sigma)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ref.npz"]  # no temporary left behind
    with np.load(path) as data:  # EDM's layout: np.savez with float64 mu / sigma
        assert sorted(data.keys()) == ["mu", "sigma"] and data["sigma"].dtype == np.float64
    mu2, sigma2 = load_reference_stats(path, dims=6)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)


def test_pytorch_fid_save_stats_layout(tmp_path):
    """pytorch-fid --save-stats: np.savez_compressed, mu from float32 activations."""
    mu, sigma = _stats()
    path = tmp_path / "pfid.npz"
    np.savez_compressed(path, mu=mu.astype(np.float32), sigma=sigma)
    mu2, sigma2 = load_reference_stats(path, dims=6)
    assert mu2.dtype == np.float64 and sigma2.dtype == np.float64
    np.testing.assert_array_equal(mu2, mu.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(sigma2, sigma)


def test_wrong_dimension_and_bad_files(tmp_path):
    mu, sigma = _stats(d=6)
    path = save_reference_stats(tmp_path / "ref.npz", mu, sigma)
    with pytest.raises(ConfigError) as err:
        load_reference_stats(path, dims=2048)
    assert "6-d" in str(err.value) and "2048-d" in str(err.value) and "same feature extractor" in str(err.value)
    with pytest.raises(MissingFileError, match="fid-refs"):
        load_reference_stats(tmp_path / "absent.npz")
    np.savez(tmp_path / "keys.npz", m=mu, s=sigma)
    with pytest.raises(ConfigError, match="'mu' and 'sigma'"):
        load_reference_stats(tmp_path / "keys.npz")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:5])
    with pytest.raises(ConfigError, match=r"sigma \[d, d\]"):
        load_reference_stats(tmp_path / "shape.npz")


def _images(n=11, h=8, w=6, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _expected(images):
    x = pixel_vectors(images).numpy()
    return x.mean(0), np.cov(x, rowvar=False)


@pytest.mark.parametrize("key", ["x", "images", "arr_0"])
def test_stats_from_npz_equal_direct(tmp_path, key):
    imgs = _images()
    np.savez(tmp_path / "imgs.npz", **{key: imgs})
    mu, sigma = compute_reference_stats(tmp_path / "imgs.npz", pixel_vectors, batch_size=4,
                                        out_path=tmp_path / "ref.npz")
    emu, esigma = _expected(imgs)
    np.testing.assert_allclose(mu, emu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, esigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(load_reference_stats(tmp_path / "ref.npz")[1], sigma)


def test_stats_from_folder_shards_and_array(tmp_path):
    imgs = _images(n=9)
    folder = tmp_path / "folder"
    (folder / "nested").mkdir(parents=True)
    for i, im in enumerate(imgs):  # png is lossless; sorted by path: nested/ after 0*.png
        sub = folder / "nested" if i >= 5 else folder
        Image.fromarray(im).save(sub / f"{i:02d}.png")
    emu, esigma = _expected(imgs)
    for source in (folder, imgs, torch.from_numpy(imgs)):
        mu, sigma = compute_reference_stats(source, pixel_vectors, batch_size=2)
        np.testing.assert_allclose(mu, emu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, esigma, rtol=1e-10, atol=1e-12)
    np.savez(tmp_path / "s0.npz", x=imgs[:4])
    np.savez(tmp_path / "s1.npz", x=imgs[4:])
    mu, _ = compute_reference_stats([tmp_path / "s0.npz", tmp_path / "s1.npz"], pixel_vectors, batch_size=3)
    np.testing.assert_allclose(mu, emu, rtol=1e-12, atol=1e-12)


def test_num_images_is_exact(tmp_path):
    imgs = _images(n=10)
    sizes = [b.shape[0] for b in iter_image_batches(imgs, batch_size=4, num_images=7)]
    assert sizes == [4, 3]
    mu, sigma = compute_reference_stats(imgs, pixel_vectors, batch_size=4, num_images=7)
    emu, esigma = _expected(imgs[:7])
    np.testing.assert_allclose(mu, emu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sigma, esigma, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="holds 10 images but 12"):
        compute_reference_stats(imgs, pixel_vectors, num_images=12)


def test_wrong_image_size_and_layout(tmp_path):
    imgs = _images(n=4, h=8, w=8)
    with pytest.raises(ConfigError, match="8x8.*32x32"):
        compute_reference_stats(imgs, pixel_vectors, image_size=32)
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(imgs[0]).save(folder / "a.png")
    Image.fromarray(_images(n=1, h=9, w=8)[0]).save(folder / "b.png")
    with pytest.raises(ConfigError, match="b.png is 9x8"):
        compute_reference_stats(folder, pixel_vectors)
    with pytest.raises(ConfigError, match="channel-first"):
        compute_reference_stats(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)), pixel_vectors)
    with pytest.raises(ConfigError, match="uint8"):
        compute_reference_stats(imgs.astype(np.float32), pixel_vectors)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no .png"):
        compute_reference_stats(tmp_path / "empty", pixel_vectors)
    with pytest.raises(MissingFileError, match="not found"):
        compute_reference_stats(tmp_path / "absent", pixel_vectors)


def test_pixel_vectors_are_hwc_pixels_in_signed_range():
    imgs = _images(n=2, h=5, w=4, c=3)
    flat = pixel_vectors(imgs)
    assert flat.shape == (2, 60) and flat.dtype == torch.float64
    np.testing.assert_array_equal(flat[0, :3].numpy(), imgs[0, 0, 0] / 127.5 - 1.0)  # HWC: pixel (0, 0)
    assert pixel_vectors(np.array([[[[0]], [[255]]]], dtype=np.uint8)).tolist() == [[-1.0, 1.0]]


def test_fd_pixels_closed_form():
    """The fd_pixels path (pixel_statistics, frechet_distance): a set against itself is 0; against a copy
    shifted by k grey levels it is D * (k / 127.5)^2 (same covariance, means D pixels apart)."""
    imgs = np.random.default_rng(3).integers(0, 200, size=(40, 4, 4, 1), dtype=np.uint8)
    stats = pixel_statistics(imgs[i:i + 7] for i in range(0, 40, 7))
    assert stats[2] == 40
    mu, sigma = stats[:2]
    whole = pixel_statistics([imgs])
    np.testing.assert_allclose(mu, whole[0], rtol=1e-12, atol=1e-12)  # batching does not matter
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    shifted_mu, shifted_sigma, _ = pixel_statistics([imgs + np.uint8(10)])
    assert frechet_distance(mu, sigma, shifted_mu, shifted_sigma) == pytest.approx(16 * (10 / 127.5) ** 2, rel=1e-6)
