"""ld3 sample / ld3 eval: exact shards, seeds, several processes, FID path, the SLURM launcher config."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ld3_test_helpers import random_fid_state_dict

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.cli.main import main
from ld3_cli.metrics import InceptionFeatures, StatsAccumulator, save_reference_stats
from ld3_cli.metrics.fid import fid_reference
from ld3_cli.metrics import inception as inception_module
from ld3_cli.models.mnist_gmm import GaussianMixtureDenoiser, load_or_fit
from ld3_cli.schedules import discretize
from ld3_cli.solvers import solve
from ld3_cli.store import Store

REPO = Path(__file__).resolve().parents[2]
SMALL = ["teacher.n=8", "teacher.nfe=12", "teacher.check_n=0", "progress=false", "sample.grids=false"]


def _shards(path: Path):
    """Each shard's arrays, read into memory (the files are closed)."""
    shards = []
    for p in sorted(path.glob("shard_*.npz")):
        with np.load(p) as z:
            shards.append({k: z[k] for k in z.files})
    return shards


def _only(glob):
    found = [p for p in glob if (p / "manifest.json").is_file()]
    assert len(found) == 1, found
    return found[0]


def test_shards_hold_exactly_n_images_with_their_seeds(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "schedule=edm", "sample.n=50", "sample.shard_size=16", "sample.batch_size=7",
                 "sample.seed_offset=123", f"cache_dir={cache}", *SMALL]) == 0
    art = _only(cache.glob("mnist_gmm-*/samples/*"))
    shards = _shards(art)
    assert [len(s["images"]) for s in shards] == [16, 16, 16, 2]  # exact count, no padding rows
    seeds = np.concatenate([s["seeds"] for s in shards])
    assert seeds.tolist() == list(range(123, 173))
    images = np.concatenate([s["images"] for s in shards])
    assert images.dtype == np.uint8 and images.shape == (50, 28, 28, 1)
    # image i depends only on its seed: regenerate a few directly and round as EDM does
    model = GaussianMixtureDenoiser(load_or_fit(128, Store(cache).fit_cache()))
    sig = discretize("edm", 5, model.schedule)
    with torch.no_grad():
        x = solve("unipc", model, noise_for_seeds([130, 160], (1, 28, 28)) * 80.0, sig, order=3, variant="bh2")
    ref = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(images[[7, 37]].astype(int) - ref.astype(int)).max() <= 1  # batch composition: <= 1 level


def test_the_sample_grid_reuses_the_held_out_teacher_images(cache, tmp_path, monkeypatch):
    """teacher_vs_student.png: once eval has made the held-out teacher pairs, the grid reads their images instead
    of running the teacher again; before (the first schedule, or `ld3 sample`) it runs it.  Same teacher row."""
    from PIL import Image

    from ld3_cli.stages import sample_shards

    monkeypatch.chdir(tmp_path)
    ran = []
    real = sample_shards.teacher_images
    monkeypatch.setattr(sample_shards, "teacher_images", lambda ctx, seeds: ran.append(seeds) or real(ctx, seeds))
    small = [f"cache_dir={cache}", "teacher.n=8", "teacher.nfe=12", "teacher.check_n=0", "progress=false",
             "sample.shard_size=16", "eval.heldout_n=8", "eval.exact_n=64"]
    assert main(["eval", "eval.compare=[edm]", "sample.n=16", *small]) == 0
    assert len(ran) == 1  # no held-out pairs yet when the grid was drawn
    assert main(["eval", "eval.compare=[edm]", "sample.n=24", *small]) == 0
    assert len(ran) == 1  # the grid of the 24 samples took the stored teacher images
    rows = []
    arts = [p for p in cache.glob("mnist_gmm-*/samples/*") if (p / "manifest.json").is_file()]
    for art in sorted(arts, key=lambda p: json.loads((p / "manifest.json").read_text())["info"]["n"]):
        grid = np.asarray(Image.open(art / "teacher_vs_student.png")).astype(int)
        rows.append(grid[:grid.shape[0] // 2])
    assert len(rows) == 2 and np.abs(rows[0] - rows[1]).max() <= 1  # batch composition: <= 1 level


def test_two_process_gloo_sampling_equals_one_process(fitted_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    common = ["schedule=logsnr", "sample.n=30", "sample.shard_size=8", *SMALL]
    one, two = tmp_path / "one", tmp_path / "two"
    for store in (one, two):  # the mixture fit is there already: no process refits it
        shutil.copytree(fitted_cache, store)
    r1 = subprocess.run([sys.executable, "-m", "ld3_cli", "sample", f"cache_dir={one}", *common], cwd=tmp_path,
                        env=env, capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    r2 = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "ld3_cli", "sample",
                         f"cache_dir={two}", *common], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _only(one.glob("*/samples/*")), _only(two.glob("*/samples/*"))
    assert a.name == b.name  # same key: the artifact does not depend on the number of processes
    for sa, sb in zip(_shards(a), _shards(b), strict=True):
        assert np.array_equal(sa["images"], sb["images"]) and np.array_equal(sa["seeds"], sb["seeds"])


def test_fid_path_of_eval_on_an_rgb_model(tmp_path, monkeypatch):
    """eval.metrics=auto picks FID for RGB data with reference statistics; the value is the Frechet distance
    of Inception features of exactly n samples (random Inception weights written by the test)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(inception_module, "INPUT_SIZE", 75)  # Inception's smallest input: 16x cheaper on CPU
    weights = tmp_path / "pt_inception.pth"
    torch.save(random_fid_state_dict(), weights)
    feats = InceptionFeatures(weights_path=str(weights), batch_size=16)
    g = torch.Generator().manual_seed(1)
    ref_imgs = (torch.rand(20, 32, 32, 3, generator=g) * 255).to(torch.uint8)
    mu, sigma = StatsAccumulator().add(feats(ref_imgs)).stats()
    ref = tmp_path / "ref.npz"
    save_reference_stats(ref, mu, sigma)
    args = ["eval", "model=custom", "+model.shape=[3,32,32]", "dataset=cifar10", f"dataset.fid_ref={ref}",
            f"eval.inception_weights={weights}", "eval.compare=[edm]", "sample.n=24", "sample.shard_size=24",
            "eval.heldout_n=4", f"cache_dir={tmp_path}/c", *SMALL]
    assert main(args) == 0
    metrics = _only((tmp_path / "c").glob("custom-*/eval/*"))
    got = json.loads((metrics / "metrics.json").read_text())
    imgs = np.concatenate([s["images"] for s in _shards(_only((tmp_path / "c").glob("custom-*/samples/*")))])
    acc = StatsAccumulator().add(feats(torch.from_numpy(imgs)))
    assert acc.n == 24
    reference = fid_reference(ref)  # eval's cached reference: its 2048-d covariance root is not computed again
    assert np.array_equal(reference.mu, mu) and np.array_equal(reference.sigma, sigma)
    assert got["fid"] == pytest.approx(reference.distance(*acc.stats()), rel=1e-6)
    assert "fd_exact" not in got and got["rmse"] >= 0


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                                          "hydra.launcher.gpus_per_node=1"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.partition == "gpu" and cfg.nfe == 5


def test_each_torchrun_rank_builds_and_samples_on_its_own_gpu(fitted_cache, tmp_path, monkeypatch):
    """Rank 1 of 2 on a machine with two CUDA devices (simulated): its device is fixed to cuda:1 before anything is
    built, so the model it builds, the noise it draws and the shards it writes are all cuda:1's."""
    from hydra import compose, initialize_config_dir

    from ld3_cli.models import registry
    from ld3_cli.stages import artifacts, sample_shards
    from ld3_cli.stages.context import StageContext

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(d))
    seen = {}
    real_build = registry.build_model

    def build(cfg, bc):  # a CPU model stands in for the GPU one; the device it was asked for is recorded
        seen["model"] = bc.device
        return real_build(cfg, type(bc)(**{**bc.__dict__, "device": torch.device("cpu")}))

    class FakeDist:
        def barrier(self):
            pass

    def images(ctx, seeds, sampler):
        seen.setdefault("noise", set()).add(ctx.device)
        return torch.zeros(len(seeds), 1, 28, 28)

    written = []
    monkeypatch.setattr(registry, "build_model", build)
    monkeypatch.setattr(sample_shards, "init_distributed", lambda device: FakeDist())
    monkeypatch.setattr(sample_shards, "student_images", images)
    monkeypatch.setattr(sample_shards, "write_shard", lambda part, k, imgs, seeds: written.append(k))
    store = tmp_path / "c"
    shutil.copytree(fitted_cache, store)
    overrides = [f"cache_dir={store}", "device=auto", "schedule=logsnr", "sample.n=40", "sample.shard_size=10",
                 *SMALL]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("sample", overrides=overrides)
    ctx = StageContext(cfg, "sample", overrides)
    assert ctx.device == torch.device("cuda", 1) and current == [1]  # fixed before anything was built
    from ld3_cli.errors import MissingArtifactError

    with pytest.raises(MissingArtifactError):  # rank 1 writes its shards; rank 0 (absent here) would publish them
        artifacts.samples_artifact(ctx, "logsnr")
    assert seen["model"] == torch.device("cuda", 1)
    assert seen["noise"] == {torch.device("cuda", 1)}
    assert written == [2, 3]  # rank 1's contiguous block of the 4 shards
