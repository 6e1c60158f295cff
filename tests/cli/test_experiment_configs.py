"""configs/experiment/<setup>_paper.yaml: the LD3 paper's settings as configuration.

The table below is written from the official code (vinhsuhi/LD3 @ 9e4a66f: configs/*.yml, scripts/gen_data.sh,
README, trainer.py, samplers/); each composed experiment must show exactly these values.
"""
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ld3_cli.cli.apps import config_dir
from ld3_cli.stages.checks import solver_options

# values common to every official config (cifar10.yml ... stable_diff_v1-5.yml) and the trainer
COMMON = {
    "seed": 0, "solver.lower_order_final": True, "teacher.solver.name": "unipc",
    "teacher.solver.lower_order_final": True, "train.loss": "lpips", "train.val_fraction": 0.5, "train.lr": 0.005,
    "train.momentum": 0.9, "train.offsets_optimizer": "sgd", "train.offset_units": "official", "train.lr_decay": 0.8,
    "train.min_lr": 5e-5, "train.patience": 5, "train.grad_clip": 1.0, "train.win_rate": 0.5, "train.gamma": 0.001,
    "train.shift_lr": None, "train.eval_scale": "model", "train.noise_estimate": "eval", "solver.name": "unipc",
}
PIXEL = {"solver.order": 3, "solver.variant": "bh1", "teacher.n": 100, "teacher.nfe": 20,
         "teacher.discretization": "edm", "teacher.solver.variant": "bh1", "train.param": "lambda",
         "train.init": "logsnr", "train.batch_size": 2, "train.lr_offsets": 0.1, "train.iters_phase1": 50,
         "train.iters_phase2": 125, "sample.n": 50000, "nfe": 10}
LATENT = {"solver.order": 3, "solver.variant": "bh2", "teacher.n": 100, "teacher.nfe": 20,
          "teacher.discretization": "time_edm", "teacher.solver.variant": "bh2", "train.param": "time",
          "train.init": "time_uniform", "train.batch_size": 1, "train.lr_offsets": 0.001, "train.iters_phase1": 100,
          "train.iters_phase2": 150, "sample.n": 50000, "nfe": 10}
OFFICIAL = {
    "cifar10_paper": {**COMMON, **PIXEL, "model.name": "edm-cifar10", "dataset.name": "cifar10"},
    "ffhq_paper": {**COMMON, **PIXEL, "model.name": "edm-ffhq64", "dataset.name": "ffhq64"},
    "afhqv2_paper": {**COMMON, **PIXEL, "model.name": "edm-afhqv2", "dataset.name": "afhqv2"},
    "lsun_paper": {**COMMON, **LATENT, "model.name": "ldm-lsun-bedroom", "dataset.name": "lsun_bedroom"},
    "imagenet256_paper": {**COMMON, **LATENT, "dataset.name": "imagenet256", "model.guidance_scale": 2.0},
    "sd15_paper": {**COMMON, "model.name": "sd15", "dataset.name": "coco", "model.guidance_scale": 7.5,
                   "solver.order": 2, "solver.variant": "bh2", "teacher.n": 50, "teacher.nfe": 6,
                   "teacher.discretization": "time_uniform", "teacher.solver.order": 2, "train.param": "time",
                   "train.init": "time_uniform", "train.batch_size": 1, "train.lr_offsets": 0.001,
                   "train.iters_phase1": 50, "train.iters_phase2": 75},
    # no official MNIST config: cifar10.yml's values on the MNIST DDPM, except the L2 loss and a CPU sample count
    "mnist_paper": {**COMMON, **PIXEL, "model.name": "mnist_ddpm", "teacher.discretization": "time_edm",
                    "train.loss": "l2", "sample.n": 1000, "nfe": 5},
}


def composed(experiment, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[f"+experiment={experiment}", *overrides])


def lookup(cfg, dotted):
    return OmegaConf.select(cfg, dotted, throw_on_missing=True)


@pytest.mark.parametrize("experiment", sorted(OFFICIAL))
def test_experiment_config_holds_the_official_values(experiment):
    cfg = composed(experiment)
    got = {k: lookup(cfg, k) for k in OFFICIAL[experiment]}
    assert got == OFFICIAL[experiment]


def test_cfg_job_shows_the_official_values():
    """What a user sees: `ld3 train +experiment=cifar10_paper --cfg job` prints the values, not interpolations."""
    out = subprocess.run([sys.executable, "-m", "ld3_cli", "train", "+experiment=cifar10_paper", "--cfg", "job"],
                         capture_output=True, text=True, check=True).stdout
    cfg = OmegaConf.create(yaml.safe_load(out))
    for key, want in OFFICIAL["cifar10_paper"].items():
        assert lookup(cfg, key) == want, key


def test_a_sweep_over_solvers_gives_each_solver_only_its_own_options():
    """The experiment sets UniPC's variant for the whole sweep; DPM-Solver++ and iPNDM take what they know."""
    for name, want in (("dpmpp", {"order": 3, "lower_order_final": True}), ("ipndm", {"order": 3}),
                       ("unipc", {"order": 3, "variant": "bh1", "lower_order_final": True})):
        opts = solver_options(composed("cifar10_paper", f"solver={name}").solver)
        assert {k: opts[k] for k in want} == want
        assert set(opts) <= {"order", "variant", "lower_order_final", "corrector", "solver_type", "coefficients"}
        if name != "unipc":
            assert "variant" not in opts


def test_the_learned_solver_preset_changes_only_what_is_learned_and_the_pairs():
    """`train=learned_solver` runs LD3's phases as `ld3 train` does (its LD3 part is what it is compared with):
    of the train options only `learn` differs from the default; the teacher makes more pairs."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        base = OmegaConf.to_container(compose("train").train, resolve=True)
        preset = compose("train", overrides=["train=learned_solver"])
    got = OmegaConf.to_container(preset.train, resolve=True)
    assert {k for k in got if got[k] != base.get(k)} == {"learn"}
    assert got["learn"] == ["steps", "offsets", "coefficients"] and preset.teacher.n == 1000
