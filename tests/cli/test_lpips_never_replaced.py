"""A run that would train with LPIPS and lacks its weights stops before anything is loaded; train.loss=l2 runs."""
import pytest
import torch

from ld3_cli.cli.main import main
from ld3_cli.models import registry

# the DDPM++ / VP CIFAR-10 architecture (random weights), shrunk so a CPU test stays fast: RGB images, so the
# default loss (auto) is the paper's LPIPS
SMALL_EDM = ["model=edm_cifar10_random", "dataset=cifar10", "model.init_kwargs.img_resolution=16",
             "model.init_kwargs.model_channels=16", "model.init_kwargs.channel_mult=[1,1]",
             "+model.init_kwargs.num_blocks=1", "teacher.n=4", "teacher.nfe=4", "teacher.check_n=0", "nfe=3",
             "solver=euler", "train.iters_phase1=1", "train.iters_phase2=1", "progress=false", "device=cpu"]


@pytest.fixture
def no_vgg(tmp_path, monkeypatch):
    """An empty torch hub cache: the VGG16 backbone LPIPS needs is not there."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))


@pytest.mark.parametrize("loss", ["auto", "lpips"])
def test_missing_lpips_weights_stop_the_run_before_the_model_loads(no_vgg, tmp_path, monkeypatch, capsys, loss):
    built = []
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: built.append(a) or pytest.fail("model built"))
    cache = tmp_path / "cache"
    for stage in ("train", "run"):
        assert main([stage, *SMALL_EDM, f"train.loss={loss}", f"cache_dir={cache}"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "vgg16-397923af.pth" in err and str(tmp_path / "hub" / "checkpoints") in err, err
        assert "https://download.pytorch.org/models/vgg16-397923af.pth" in err and "train.loss=l2" in err
    assert not built and not cache.exists()  # nothing loaded, nothing written


def test_the_l2_alternative_runs_and_records_its_loss(no_vgg, tmp_path, capsys):
    import json

    cache = tmp_path / "cache"
    assert main(["teacher-sample", *SMALL_EDM, f"cache_dir={cache}"]) == 0
    assert main(["train", *SMALL_EDM, "train.loss=l2", f"cache_dir={cache}"]) == 0
    summary = json.loads(next(cache.glob("*/schedules/*/summary.json")).read_text())
    assert summary["loss"] == "l2" and summary["loss_requested"] == "l2"


def test_auto_chooses_l2_for_one_channel_images_and_says_so(no_vgg, tmp_path, fitted_cache):
    """The embedded default (1-channel digits): auto is L2, no LPIPS file needed, the summary records it."""
    import json
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(fitted_cache, cache)
    tiny = ["teacher.n=6", "teacher.nfe=6", "teacher.check_n=0", "train.iters_phase1=1", "train.iters_phase2=1",
            "progress=false", f"cache_dir={cache}"]
    assert main(["teacher-sample", *tiny]) == 0
    assert main(["train", *tiny]) == 0
    summary = json.loads(next(cache.glob("mnist_gmm-*/schedules/*/summary.json")).read_text())
    assert summary["loss"] == "l2" and summary["loss_requested"] == "auto"
