"""Bad configuration: one line naming the problem and the fix, exit status 2, nothing written.

"Nothing written" is checked on the store directory: settings that are wrong in themselves are
refused by the CLI before Hydra starts, so not even the store directory appears; problems found
once the stage runs (a checkpoint to read, reference statistics) leave only Hydra's log of the
failed job under ``<cache>/logs/`` -- no artifact, no partial work, no lock file, no directory.
Two cases run as real ``ld3`` processes to check the process exit status itself.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_testlib import finish, one_error_line, run_refused, spawn, store_listing

from ld3_cli.cli.main import main


# -- refused before Hydra starts: nothing at all is created ---------------------------------------------
@pytest.mark.parametrize("stage,args,needles", [
    ("train", ["nfe=0"], ["nfe must be at least 1, got 0"]),
    ("sample", ["nfe=-3"], ["nfe must be at least 1, got -3"]),
    ("train", ["solver=heun", "nfe=4"], ["Heun needs an odd NFE", "nfe"]),
    ("eval", ["solver=dpmpp", "solver.order=3", "nfe=2"], ["needs at least 3 steps"]),
    ("teacher-sample", ["teacher.nfe=0"], ["nfe must be at least 1, got 0"]),
    ("train", ["solver=rk45"], ["unknown solver 'rk45'", "choose one of: deis, dpmpp, euler, heun, ipndm, k_dpmpp_2m, "
                                                          "k_euler, k_heun, unipc"]),
    ("run", ["model=nope"], ["unknown model 'nope'", "choose one of:", "mnist_gmm"]),
    ("sample", ["dataset=nope"], ["unknown dataset 'nope'", "choose one of:", "mnist5k"]),
    ("sample", ["schedule=fancy"], ["schedule 'fancy' is unknown", "use ld3 or one of"]),
    ("eval", ["eval.metrics=is"], ["eval.metrics must be auto, fid or fd_pixels; got 'is'"]),
    ("train", ["train.offsets_optimizer=adam"], ["train.offsets_optimizer must be rmsprop or sgd, got 'adam'"]),
    ("train", ["+train.lrr=1"], ["unknown train option(s) ['lrr']"]),
    ("run", ["train.init_candidates=[edm,nope]"], ["train.init_candidates must be a non-empty list of"]),
    ("sample", ["solver.variant=bh3"], ["solver.variant must be bh1 or bh2, got 'bh3'"]),
    ("teacher-sample", ["teacher.solver.variant=bh9"], ["teacher.solver.variant must be bh1 or bh2, got 'bh9'"]),
    ("train", ["+solver.varient=bh1"], ["solver.varient is not an option of any solver", "solver 'unipc' takes"]),
    ("train", ["solver=dpmpp", "solver.lower_order_final=maybe"],
     ["solver.lower_order_final must be true, false or auto, got 'maybe'"]),
])
def test_impossible_settings_are_refused_before_anything_runs(stage, args, needles, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main([stage, *args, f"cache_dir={cache}"]) == 2
    line = one_error_line(capsys.readouterr().err, stage)
    for needle in needles:
        assert needle in line, line
    assert not cache.exists(), "nothing may be created for a refused command"


# -- impossible combinations of settings that are each fine: refused up front, for every job of a sweep ---------
CROSS_OPTION = [
    (["train.learn=[steps,offsets,coefficients]", "solver=heun", "nfe=5"],
     ["solver 'heun' of order 2 combines no earlier network outputs", "use dpmpp, unipc, ipndm, deis of order >= 2"]),
    (["train.learn=[steps,coefficients]", "solver=dpmpp", "solver.order=1", "nfe=5"],
     ["solver 'dpmpp' of order 1 combines no earlier network outputs"]),
    (["train.learn=[steps,coefficients]", "solver=euler", "nfe=5"], ["solver 'euler' of order 1 combines no"]),
    (["train.learn=[steps,coefficients]", "solver=k_dpmpp_2m", "nfe=5"], ["solver 'k_dpmpp_2m' is a stock sampler"]),
    (["solver=heun", "nfe=6"], ["Heun needs an odd NFE"]),
    (["solver=k_heun", "nfe=4"], ["solver 'k_heun' needs an odd NFE >= 3"]),
    (["solver=unipc", "solver.order=3", "nfe=2"], ["solver 'unipc' of order 3 needs at least 3 steps"]),
    (["teacher.solver.order=3", "teacher.nfe=2"], ["solver 'unipc' of order 3 needs at least 3 steps"]),
    (["teacher.n=3", "train.val_fraction=0.1"], ["teacher.n=3 with train.val_fraction=0.1 leaves 3 training and 0 "
                                                  "validation pairs"]),
    (["-m", "solver=dpmpp,heun", "nfe=4"], ["Heun needs an odd NFE", "(job: solver=heun nfe=4 "]),
    (["model=edm_cifar10_random", "dataset=cifar10", "train.lpips_weights=/nonexistent/vgg16.pth"],
     ["vgg16", "/nonexistent/vgg16.pth"]),
]


@pytest.mark.parametrize("args,needles", CROSS_OPTION)
def test_impossible_combinations_are_refused_before_any_model_or_artifact(args, needles, tmp_path, capsys,
                                                                          monkeypatch):
    """Each combination is refused by `ld3 train` with exit 2 within 5 s: no model built, nothing written."""
    import time

    from ld3_cli.models import registry

    built = []
    monkeypatch.setattr(registry, "build_model", lambda *a, **k: built.append(a))
    cache = tmp_path / "cache"
    start = time.perf_counter()
    assert main(["train", *args, f"cache_dir={cache}"]) == 2
    assert time.perf_counter() - start < 5.0
    line = one_error_line(capsys.readouterr().err, "train")
    for needle in needles:
        assert needle in line, line
    assert built == [] and not cache.exists(), "a refused command loads no model and writes nothing"


# -- refused when the stage reads a file: no store entry ------------------------------------------------
def _state_dict_of_another_network(path):
    torch.save({"encoder.weight": torch.zeros(8, 3), "encoder.bias": torch.zeros(8)}, path)


def _torch_zip_file(path):
    torch.save({"ema": {"weight": torch.zeros(2, 2)}}, path)


@pytest.mark.parametrize("model,make,needles", [
    (["model=mnist_ddpm"], None, ["MNIST DDPM weights not found at {path}", "put ddpm_mnist_starter.pth there",
                                  "github.com/Yichizz/hot_vs_cold_diffusion"]),
    (["model=edm_cifar10"], None, ["EDM checkpoint {path} not found",
                                   "nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl"]),
    (["model=mnist_ddpm"], _state_dict_of_another_network,
     ["does not have the MNIST DDPM layout", "check model.path points at ddpm_mnist_starter.pth"]),
    (["model=edm_cifar10"], _torch_zip_file,
     ["the weights file {path} is damaged or not a checkpoint of this model kind",
      "point model.path at the right file (edm-cifar10-32x32-uncond-vp.pkl from https://"]),
    (["model=custom", "model._target_=my_models.Missing"], None,
     ["cannot build model._target_=my_models.Missing", "Error locating target 'my_models.Missing'",
      "set model._target_ to an importable ld3_cli.models.Denoiser subclass"]),
])
def test_missing_or_wrong_checkpoints_are_refused_without_writing(model, make, needles, tmp_path, capsys):
    cache = tmp_path / "cache"
    path = tmp_path / "weights.pkl"
    if make is not None:
        make(path)
    path_arg = [] if "model=custom" in model else [f"model.path={path}"]
    assert main(["teacher-sample", *model, *path_arg, "teacher.n=4", "progress=false", "device=cpu",
                 f"cache_dir={cache}"]) == 2
    line = one_error_line(capsys.readouterr().err, "teacher-sample")
    for needle in needles:
        assert needle.format(path=path) in line, line
    assert store_listing(cache) == set(), "only Hydra's job log may exist"


# the fault model as a 3x8x8 RGB model, so eval computes FID from ``dataset.fid_ref``
RGB_MODEL = ["++model.shape=[3,8,8]", "eval.compare=[logsnr]"]


def _stats(path, d):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((d, d))
    np.savez(path, mu=rng.standard_normal(d), sigma=a @ a.T / d)


@pytest.mark.parametrize("stage", ["eval", "run"])
@pytest.mark.parametrize("case", ["wrong_dimension", "missing_reference", "missing_inception_weights"])
def test_bad_fid_inputs_are_refused_before_sampling(stage, case, tmp_path, capsys):
    cache, ref, weights = tmp_path / "cache", tmp_path / "ref.npz", tmp_path / "no-such-inception.pth"
    if case == "wrong_dimension":
        _stats(ref, 64)
        needles = [f"{ref} holds 64-d statistics but the features are 2048-d", "recompute them"]
    elif case == "missing_reference":
        needles = [f"FID reference statistics not found at {ref}", "ld3 fid-ref", "dataset.fid_ref="]
    else:
        _stats(ref, 2048)
        needles = [f"FID Inception weights not found at {weights}", "pt_inception-2015-12-05-6726825d.pth"]
    line = run_refused(capsys, stage, *RGB_MODEL, f"dataset.fid_ref={ref}", f"eval.inception_weights={weights}",
                       cache=cache)
    for needle in needles:
        assert needle in line, line
    assert store_listing(cache) == set(), "nothing is sampled or trained before the FID inputs are checked"


class _NoFeatures:
    """Stands in for the Inception network: the size check must fail before any feature is computed."""

    dims = 2048

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, batch):
        raise AssertionError("features computed for images of the wrong size")


@pytest.mark.parametrize("sizes,image_size,needle", [
    ([(20, 24)] * 3, 32, "is 20x24 (HxW) but FID statistics here need 32x32 images"),
    ([(20, 24), (20, 24), (16, 16)], None, "is 16x16 (HxW) but FID statistics here need 20x24 images"),
])
def test_images_of_the_wrong_size_for_fid_are_refused(sizes, image_size, needle, tmp_path, monkeypatch, capsys):
    import ld3_cli.metrics as metrics

    monkeypatch.setattr(metrics, "InceptionFeatures", _NoFeatures)
    folder, out = tmp_path / "images", tmp_path / "refs" / "stats.npz"
    folder.mkdir()
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i:03d}.png")
    args = [f"fid_ref.source={folder}", f"fid_ref.out={out}", f"cache_dir={tmp_path / 'cache'}"]
    if image_size:
        args.append(f"fid_ref.image_size={image_size}")
    assert main(["fid-ref", *args]) == 2
    line = one_error_line(capsys.readouterr().err, "fid-ref")
    assert needle in line and "resize the dataset to that size first" in line, line
    assert not out.parent.exists() or not any(out.parent.iterdir()), "no statistics may be written"


# -- the real process exit status ---------------------------------------------------------------------------
def test_the_ld3_process_exits_2_with_one_line(tmp_path):
    code, out, err = finish(spawn("teacher-sample", "nfe=0", cwd=tmp_path, base=["progress=false"]))
    assert code == 2, err
    assert "nfe must be at least 1, got 0" in one_error_line(err, "teacher-sample") and out == ""
    assert list(tmp_path.iterdir()) == [], "nothing may be created"
