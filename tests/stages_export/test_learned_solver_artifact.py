"""A learned solver (train.learn with coefficients) through the store: the artifact samples exactly what was
learned -- `ld3 sample` from the stored schedule equals the exported schedule.json run by ld3_sampler.py, and the
sampler read back from the artifact equals the one the stage wrote."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from stages_export_helpers import make_ctx

from ld3_cli.data.seeds import noise_for_seeds
from ld3_cli.export import load_schedule_json
from ld3_cli.metrics.images import to_uint8
from ld3_cli.stages import export as export_stage
from ld3_cli.stages import sample as sample_stage
from ld3_cli.stages import schedules as schedules_stage
from ld3_cli.stages import teacher_sample, train
from ld3_cli.stages.artifacts import load_sampler
from ld3_cli.store.shards import iter_images

LEARN = ["train.learn=[steps,offsets,coefficients]", "solver=dpmpp", "solver.order=2", "nfe=4"]


@pytest.mark.parametrize("afs", [False, True], ids=["", "analytic-first"])
def test_a_learned_solver_artifact_samples_what_was_learned(tmp_path, one_torch_thread, caplog, afs):
    """``afs``: with the analytic first step the NFE-4 run has 5 steps, and the export runs it with 4 evaluations."""
    store = tmp_path / "store"
    iters = 12 if afs else 4  # with 4 training pairs the analytic-first run's coefficients beat LD3's after 12
    learn = [*LEARN, f"train.iters_phase3={iters}", *(["solver.analytic_first=true"] if afs else [])]
    teacher_sample.run(make_ctx("teacher-sample", store, learn))
    with caplog.at_level(logging.INFO, logger="ld3"):
        art = train.run(make_ctx("train", store, learn))
    # the run says up front what phase 3 will do (its batch of 50 capped at the 4 training pairs)
    assert f"phases: steps 3 it, offsets 3 it, coefficients {iters} it; the coefficients with adam at lr 0.05, " \
        "batch 4" in caplog.text
    # ... and that 4 training pairs are far fewer than the measured best (500, train=learned_solver's teacher.n / 2)
    assert "learning solver coefficients from 4 training pairs" in caplog.text
    schedule = art.json("schedule.json")
    assert schedule["learn"] == ["steps", "offsets", "coefficients"] and schedule["sampler"]["learned_coefficients"]
    ctx = make_ctx("sample", store, [*learn, "sample.n=6", "sample.shard_size=6", "sample.grids=false"])
    sampler = load_sampler(art, ctx.model.schedule)
    assert sampler.coefficients is not None and sampler.coefficients.steps == 4 + afs
    assert sampler.analytic_first is afs
    # the table in schedule.json (for people) is the one in the tensors (what runs)
    assert torch.equal(torch.tensor(schedule["coefficients"]["pred"], dtype=torch.float64), sampler.coefficients.pred)

    samples = sample_stage.run(ctx)
    stored = np.concatenate(list(iter_images(samples)))
    out = tmp_path / "export"
    export_stage.run(make_ctx("export", store, [*learn, f"export.out={out}", "export.format=json"]))
    record = load_schedule_json(out / "schedule.json")
    assert record["learned_coefficients"] is True and record["analytic_first"] is afs
    ns: dict = {"__name__": "ld3_sampler"}
    exec(compile((out / "ld3_sampler.py").read_text(), "ld3_sampler.py", "exec"), ns)  # noqa: S102 - our own file
    noises = noise_for_seeds(range(1_000_000, 1_000_006), tuple(ctx.model.shape))
    assert len(ns["evaluation_points"](record)) == 4
    with torch.no_grad():
        x0 = ns["sample"](ctx.model, noises * record["sigmas"][0], record)
        direct = sampler.solve(ctx.model, noises * float(sampler.sigmas[0]))
    assert torch.equal(x0, direct)
    assert np.abs(stored.astype(int) - to_uint8(ctx.model.decode(x0)).astype(int)).max() <= 1  # batch composition
    # `ld3 schedules` and the training plot show the learned coefficients beside the solver's own
    learned, base = schedules_stage.learned_tables(make_ctx("schedules", store, learn))
    assert torch.equal(learned.pred, sampler.coefficients.pred) and not torch.equal(learned.pred, base.widen(4).pred)
    png = tmp_path / "s.png"
    schedules_stage.run(make_ctx("schedules", store, [*learn, f"schedules.out={png}", "schedules.include=[ld3,edm]"]))
    assert png.stat().st_size > 0 and (art.path / "schedule.png").stat().st_size > 0


def test_the_few_pairs_warning_threshold_is_half_the_learned_solver_preset():
    """The stage warns below the training pairs that train=learned_solver gives (half of its teacher.n validate)."""
    from omegaconf import OmegaConf

    from ld3_cli.cli.apps import config_dir
    from ld3_cli.stages.training import LEARNED_SOLVER_TRAIN_PAIRS

    preset = OmegaConf.load(config_dir() / "train" / "learned_solver.yaml")
    assert LEARNED_SOLVER_TRAIN_PAIRS == preset.teacher.n // 2


@pytest.mark.parametrize("joint", [0.0, 0.5])
def test_a_residual_artifact_samples_what_was_learned_and_exports_it(tmp_path, one_torch_thread, caplog, joint):
    """With ``residual`` learned too (alone in phase 4, or jointly with the steps and weights): the stored sampler
    carries the operator, `ld3 sample` runs it, and the exported schedule.json (version 5) run by ld3_sampler.py
    gives the same images bit for bit."""
    store = tmp_path / "store"
    learn = ["train.learn=[steps,offsets,coefficients,residual]", "solver=ipndm", "solver.order=3", "nfe=4",
             "train.iters_phase3=12", "train.iters_residual=12", "train.val_every_residual=2", "train.residual_width=4",
             "train.lr_residual=0.003", f"train.residual_joint={joint}"]
    teacher_sample.run(make_ctx("teacher-sample", store, learn))
    with caplog.at_level(logging.INFO, logger="ld3"):
        art = train.run(make_ctx("train", store, learn))
    how = "with coefficients, steps, offsets at 0.5x their rates" if joint else "alone"
    assert f"residual operator (4 hidden channels a step) {how} for 12 it, with adam at lr 0.003" in caplog.text
    plain = art.json("schedule.json")["sampler"]
    assert plain["residual"] == {"steps": 4, "channels": 1, "history": 4, "width": 4, "first": 0}
    ctx = make_ctx("sample", store, [*learn, "sample.n=6", "sample.shard_size=6", "sample.grids=false"])
    sampler = load_sampler(art, ctx.model.schedule)
    assert sampler.residual is not None and sampler.residual.magnitude() > 0
    stored = np.concatenate(list(iter_images(sample_stage.run(ctx))))
    out = tmp_path / "export"
    export_stage.run(make_ctx("export", store, [*learn, f"export.out={out}", "export.format=json"]))
    record = load_schedule_json(out / "schedule.json")
    assert record["version"] == 5 and record["residual"]["width"] == 4 and len(record["residual"]["weights"]) == 4
    ns: dict = {"__name__": "ld3_sampler"}
    exec(compile((out / "ld3_sampler.py").read_text(), "ld3_sampler.py", "exec"), ns)  # noqa: S102 - our own file
    noises = noise_for_seeds(range(1_000_000, 1_000_006), tuple(ctx.model.shape))
    with torch.no_grad():
        x0 = ns["sample"](ctx.model, noises * record["sigmas"][0], record)
        direct = sampler.solve(ctx.model, noises * float(sampler.sigmas[0]))
        without = dataclasses.replace(sampler, residual=None).solve(ctx.model, noises * float(sampler.sigmas[0]))
    assert torch.equal(x0, direct) and not torch.equal(direct, without)
    assert np.abs(stored.astype(int) - to_uint8(ctx.model.decode(x0)).astype(int)).max() <= 1  # batch composition
