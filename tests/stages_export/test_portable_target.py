"""Schedules for the sampler a user keeps: `ld3 train solver=k_euler|k_dpmpp_2m|k_heun` learns the time steps under
the exact arithmetic of k-diffusion's (and ComfyUI's) stock sampler, and the exported list, run in k-diffusion's own
sampler, scores on ld3's held-out noises what ld3's evaluation says (to 1e-4 RMSE)."""
from __future__ import annotations

import json

import pytest
import torch
from ld3_test_helpers import kdiffusion
from stages_export_helpers import compose, make_ctx

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.export import parse_comfyui_text, parse_tensor_literal
from ld3_cli.stages import export as export_stage
from ld3_cli.stages import train
from ld3_cli.stages.artifacts import heldout_teacher_artifact
from ld3_cli.stages.checks import check_config
from ld3_cli.stages.evaluation import heldout_distances

HELDOUT = 16
STOCK = [("k_euler", "sample_euler", 4), ("k_dpmpp_2m", "sample_dpmpp_2m", 4), ("k_heun", "sample_heun", 5)]


@pytest.mark.parametrize("solver,function,nfe", STOCK)
def test_a_schedule_trained_for_a_stock_sampler_scores_there_what_ld3_measured(learned_store, tmp_path, solver,
                                                                              function, nfe):
    sampling, _ = kdiffusion()
    store, _ = learned_store
    over = [f"solver={solver}", f"nfe={nfe}", f"eval.heldout_n={HELDOUT}"]
    art = train.run(make_ctx("train", store, over))
    schedule = art.json("schedule.json")
    assert schedule["learn"] == ["steps"] and schedule["sigmas"] == schedule["sigmas_eval"]  # the time steps only
    assert art.manifest["info"]["best_val"] <= art.manifest["info"]["init_val"]
    ctx = make_ctx("export", store, [*over, f"export.out={tmp_path}", "export.format=[json,kdiffusion,comfyui]"])
    export_stage.run(ctx)
    stock = parse_tensor_literal((tmp_path / "kdiffusion_sigmas.py").read_text())
    assert stock == schedule["sigmas"] + [0.0] == parse_comfyui_text((tmp_path / "comfyui_sigmas.txt").read_text())
    record = json.loads((tmp_path / "schedule.json").read_text())
    assert record["to_zero"] and record["trained_for"]["stock"]["k-diffusion"] == function
    assert not (tmp_path / "comfyui_sigmas_to_zero.txt").exists()     # the line ends with 0 already

    ours = heldout_distances(ctx, "ld3")["rmse"]                        # ld3's own evaluation (`ld3 eval`'s rmse)
    off = int(ctx.cfg.sample.seed_offset)
    target = heldout_teacher_artifact(ctx).tensors({"images": (HELDOUT, None, None, None)})["images"].float()
    noises = noise_for_seeds(range(off, off + HELDOUT), tuple(ctx.model.shape))
    lst = torch.tensor(stock)                                           # float32, as kdiffusion_sigmas.py makes it
    with torch.no_grad():
        out = getattr(sampling, function)(lambda z, s: ctx.model(z, s, None), noises * lst[0], lst, disable=True)
    theirs = float(((ctx.model.decode(out) - target) ** 2).mean().sqrt())
    assert abs(theirs - ours) <= 1e-4, (theirs, ours)


def test_stock_samplers_learn_the_time_steps_only_and_refuse_coefficients(learned_store):
    store, _ = learned_store
    cfg = compose("train", [f"cache_dir={store}", "solver=k_dpmpp_2m", "train.learn=[steps,offsets,coefficients]"])
    problem = check_config(cfg, files=False)
    assert problem is not None and "stock sampler" in problem and "train.learn=[steps]" in problem
    from ld3_cli.ld3 import LD3Trainer, TrainOptions
    from ld3_cli.models import Denoiser
    from ld3_cli.schedules.noise import EDM

    class Shrink(Denoiser):
        schedule, shape = EDM(), (1, 2, 2)

        def forward(self, x, sigma, cond=None):
            return 0.5 * x

    noises = torch.randn(4, 1, 2, 2)
    trainer = LD3Trainer(Shrink(), "k_dpmpp_2m", {}, 4, noises, noises.clamp(-1, 1),
                         options=TrainOptions(iters_phase1=5, iters_phase2=7))
    assert trainer.options.learn == ("steps",) and [(p.name, p.budget) for p in trainer.phases] == [("steps", 12)]
