"""The shipped diffusers / flow model configs, and the user-facing errors (missing directory, missing extra)."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ld3_cli.errors import ConfigError, MissingFileError
from ld3_cli.models import BuildContext, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"
DIFFUSERS_CONFIGS = {
    "ddpm_cifar10": "google/ddpm-cifar10-32",
    "ldm_celebahq": "CompVis/ldm-celebahq-256",
    "ldm_lsun_bedroom": None,                                 # original LDM checkpoint, converted by the user
    "dit_imagenet256": "facebook/DiT-XL-2-256",
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "flow_sd3": "stabilityai/stable-diffusion-3-medium-diffusers",
}


def _load(name: str, weights: Path, monkeypatch) -> dict:
    monkeypatch.setenv("LD3_WEIGHTS", str(weights))
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"), resolve=True)


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CONFIGS))
def test_config_keys_and_missing_directory_message(name, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    cfg = _load(name, tmp_path / "w", monkeypatch)
    assert cfg["kind"] == "diffusers" and cfg["name"] and cfg["download"] is False
    assert cfg["param"] == "time" and cfg["teacher_discretization"] == "time_uniform"
    assert cfg["path"] == str(tmp_path / "w" / cfg["file_name"])
    assert cfg["url"].startswith("https://")
    repo = DIFFUSERS_CONFIGS[name]
    if repo:
        assert cfg["url"] == f"https://huggingface.co/{repo}"
    with pytest.raises(MissingFileError) as err:
        build_model(cfg, BuildContext())
    msg = str(err.value)
    assert cfg["path"] in msg and cfg["url"] in msg and "\n" not in msg
    if repo:
        assert f"hf download {repo} --local-dir {cfg['path']}" in msg
        assert f"huggingface-cli download {repo} --local-dir {cfg['path']}" in msg


def test_text_configs_name_prompts_and_guidance(tmp_path, monkeypatch):
    for name in ("sd15", "sd21", "flow_sd3"):
        cfg = _load(name, tmp_path, monkeypatch)
        assert cfg["prompts_file"].endswith(".json") and cfg["guidance_scale"] > 1
    assert _load("dit_imagenet256", tmp_path, monkeypatch)["guidance_scale"] > 1


def test_incomplete_directory_is_a_missing_file_error(ddpm_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ddpm_dir, broken)
    for f in (broken / "unet").glob("diffusion_pytorch_model*"):
        f.unlink()
    cfg = {"kind": "diffusers", "path": str(broken), "url": "https://huggingface.co/google/ddpm-cifar10-32"}
    with pytest.raises(MissingFileError, match="hf download google/ddpm-cifar10-32"):
        build_model(cfg, BuildContext())


def test_unconditional_model_refuses_guidance(ddpm_dir):
    with pytest.raises(ConfigError, match="unconditional"):
        build_model({"kind": "diffusers", "path": str(ddpm_dir), "guidance_scale": 3.0}, BuildContext())


def test_missing_extra_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)        # makes `import diffusers` fail
    with pytest.raises(ConfigError, match=r"pip install -e \.\[diffusers\]"):
        build_model({"kind": "diffusers", "path": str(tmp_path)}, BuildContext())


def test_flow_gaussian_config_builds_the_exact_denoiser():
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "flow_gaussian.yaml"), resolve=True)
    model = build_model(cfg, BuildContext())
    assert model.shape == (3, 32, 32)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64) * 4
    sigma = torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(model(x, sigma), 0.25 / (0.25 + sigma.view(-1, 1, 1, 1) ** 2) * x, rtol=1e-10,
                               atol=1e-10)
