"""load_edm / build: round trips through EDM-structured pickles, file handling, configs, architecture errors."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import edm_testlib as lib
import pytest
import torch
from omegaconf import OmegaConf

from ld3_cli.errors import MissingFileError
from ld3_cli.models.base import Denoiser
from ld3_cli.models.edm import EDMArchitectureError, build, load_edm
from ld3_cli.models.edm.layers import skip_init
from ld3_cli.models.edm.precond import VPPrecond
from ld3_cli.models.registry import BuildContext, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
URL_BASE = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"


def _write(tmp_path, case, **kw):
    net, kwargs = lib.build_tiny(case)
    path = tmp_path / f"{case}.pkl"
    path.write_bytes(lib.edm_style_pickle(net, kwargs, **kw))
    return net, kwargs, path


@pytest.mark.parametrize("case", sorted(lib.TINY_CASES))
def test_loaded_network_reproduces_the_pickled_one_exactly(tmp_path, case):
    net, kwargs, path = _write(tmp_path, case)
    loaded = load_edm(path)
    assert isinstance(loaded, Denoiser) and type(loaded) is type(net)
    assert loaded.name == case and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    sd, lsd = net.state_dict(), loaded.state_dict()
    assert list(sd) == list(lsd) and all(torch.equal(sd[k], lsd[k]) for k in sd)
    x = lib.probe_input()
    sigma = torch.tensor(lib.PROBE_SIGMAS)
    labels = lib.probe_labels(kwargs["label_dim"])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma, labels), net(x, sigma, labels))
    assert loaded.schedule.to_dict() == net.schedule.to_dict()
    assert loaded.condition == net.condition and loaded.shape == (3, 8, 8)


def test_protocol_2_pickles_load_too(tmp_path):
    net, _kwargs, path = _write(tmp_path, "ddpmpp_vp", protocol=2)
    loaded = load_edm(path)
    x, sigma = lib.probe_input(), torch.tensor(lib.PROBE_SIGMAS)
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), net(x, sigma))


def test_use_fp16_override_and_registry_build(tmp_path):
    _, _, path = _write(tmp_path, "adm_edm_cond")
    ctx = BuildContext()
    model = build_model({"kind": "edm", "name": "tiny-adm", "path": str(path), "use_fp16": True}, ctx)
    assert model.use_fp16 and model.name == "tiny-adm"
    assert model.condition.kind == "class" and model.condition.num_classes == 5
    # a folder plus file_name works as the path
    model2 = build({"kind": "edm", "path": str(tmp_path), "file_name": path.name}, ctx)
    assert not model2.use_fp16 and model2.name == path.stem


def test_missing_file_message_names_url_path_and_download_switch(tmp_path):
    file_name = "edm-cifar10-32x32-uncond-vp.pkl"
    cfg = {"kind": "edm", "path": str(tmp_path / "w" / file_name), "file_name": file_name,
           "url": URL_BASE + file_name, "download": False}
    with pytest.raises(MissingFileError) as err:
        build(cfg, BuildContext(allow_download=True))
    msg = str(err.value)
    assert URL_BASE + file_name in msg and str((tmp_path / "w" / file_name).resolve()) in msg
    assert "model.download=true" in msg
    # asked to download where the stage does not allow it: still says where to put the file, nothing fetched
    with pytest.raises(MissingFileError, match="may not download") as err:
        build({**cfg, "download": True}, BuildContext(allow_download=False))
    assert URL_BASE + file_name in str(err.value)
    assert not (tmp_path / "w").exists()


def test_download_places_the_file_atomically(tmp_path):
    net, _kwargs, src = _write(tmp_path, "ddpmpp_vp")
    dest = tmp_path / "weights" / "model.pkl"
    cfg = {"kind": "edm", "path": str(dest), "file_name": "model.pkl", "url": src.as_uri(), "download": True}
    model = build(cfg, BuildContext(allow_download=True))
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pkl"]  # no leftover temporary file
    x, sigma = lib.probe_input(), torch.tensor(lib.PROBE_SIGMAS)
    with torch.no_grad():
        assert torch.equal(model(x, sigma), net(x, sigma))


def test_failed_download_leaves_nothing_and_says_where_to_put_the_file(tmp_path):
    dest = tmp_path / "weights" / "model.pkl"
    cfg = {"kind": "edm", "path": str(dest), "url": (tmp_path / "absent.pkl").as_uri(), "download": True}
    with pytest.raises(MissingFileError, match="save it as") as err:
        build(cfg, BuildContext(allow_download=True))
    assert str(dest.resolve()) in str(err.value)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_unknown_network_class_is_a_clear_architecture_error(tmp_path):
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    net.__class__ = type("Generator", (VPPrecond,), {})  # e.g. a StyleGAN pickle
    path = tmp_path / "gan.pkl"
    path.write_bytes(lib.edm_style_pickle(net, kwargs))
    with pytest.raises(EDMArchitectureError, match="'Generator' is not an EDM preconditioner"):
        load_edm(path)


def test_unknown_model_type_and_unknown_argument_are_architecture_errors(tmp_path):
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    path = tmp_path / "x.pkl"
    path.write_bytes(lib.edm_style_pickle(net, {**kwargs, "model_type": "UNet2DModel"}))
    with pytest.raises(EDMArchitectureError, match="model_type 'UNet2DModel'"):
        load_edm(path)
    path.write_bytes(lib.edm_style_pickle(net, {**kwargs, "num_res_blocks": 2}))
    with pytest.raises(EDMArchitectureError, match="num_res_blocks"):
        load_edm(path)


def test_weights_that_do_not_fit_name_the_offending_keys(tmp_path):
    net, kwargs = lib.build_tiny("ddpmpp_vp")
    # the recorded arguments say 32 channels, the recorded weights have 16
    path = tmp_path / "x.pkl"
    path.write_bytes(lib.edm_style_pickle(net, {**kwargs, "model_channels": 32}))
    with pytest.raises(EDMArchitectureError, match=r"wrong shape.*model\.\S+ \(\d+.*\) vs \(\d+"):
        load_edm(path)
    # a missing and an extra tensor
    broken = copy.deepcopy(net)
    del broken.model.map_layer1._parameters["bias"]
    broken.model.map_layer0.register_buffer("extra_table", torch.zeros(3))
    path.write_bytes(lib.edm_style_pickle(broken, kwargs))
    with pytest.raises(EDMArchitectureError) as err:
        load_edm(path)
    assert "missing: model.map_layer1.bias" in str(err.value)
    assert "unexpected: model.map_layer0.extra_table" in str(err.value)


def test_model_configs_point_at_the_official_files(monkeypatch):
    expected = {
        "edm_cifar10": ("edm-cifar10-32x32-uncond-vp.pkl", None),
        "edm_cifar10_cond": ("edm-cifar10-32x32-cond-vp.pkl", None),
        "edm_ffhq64": ("edm-ffhq-64x64-uncond-vp.pkl", None),
        "edm_afhqv2": ("edm-afhqv2-64x64-uncond-vp.pkl", None),
        "edm_imagenet64": ("edm-imagenet-64x64-cond-adm.pkl", None),
    }
    monkeypatch.setenv("LD3_WEIGHTS", "/data/weights")
    for stem, (file_name, _) in expected.items():
        cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{stem}.yaml"), resolve=True)
        assert cfg["kind"] == "edm" and cfg["download"] is False
        assert cfg["file_name"] == file_name and cfg["url"] == URL_BASE + file_name
        assert cfg["path"] == f"/data/weights/{file_name}"
        assert cfg["param"] == "lambda" and cfg["teacher_discretization"] == "logsnr"
    monkeypatch.delenv("LD3_WEIGHTS")
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "edm_cifar10.yaml"), resolve=True)
    assert cfg["path"] == os.path.join("weights", "edm-cifar10-32x32-uncond-vp.pkl")


def test_random_cifar10_config_is_the_full_ddpmpp_architecture():
    cfg = OmegaConf.load(CONFIGS / "edm_cifar10_random.yaml")
    with skip_init():  # counting only
        net = build(cfg, BuildContext())
    assert isinstance(net, VPPrecond) and net.model_type == "SongUNet"
    assert sum(p.numel() for p in net.parameters()) == 55_733_891  # EDM's CIFAR-10 DDPM++: 55.7M
    assert net.shape == (3, 32, 32) and not net.condition.conditional
    assert (net.schedule.sigma_min, net.schedule.sigma_max) == (0.002, 80.0)


def test_random_init_is_seeded_and_runs():
    precond, kwargs = lib.TINY_CASES["ddpmpp_vp"]
    cfg = {"kind": "edm", "random_init": True, "precond": precond, "init_kwargs": kwargs, "seed": 3}
    a, b = build(cfg, BuildContext()), build(cfg, BuildContext())
    c = build({**cfg, "seed": 4}, BuildContext())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    with torch.no_grad():
        out = a(lib.probe_input(), torch.tensor(lib.PROBE_SIGMAS))
    assert out.shape == (2, 3, 8, 8) and bool(torch.isfinite(out).all())
