"""The trainer's state: one object, saved and loaded field by field; reading it changes nothing."""
import dataclasses
import json

import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.ld3.checkpoint import TrainStateFile
from ld3_cli.ld3.state import STATE_FORMAT, TrainerState, decode_state, encode_state
from ld3_cli.ld3.trainer import LD3Trainer, TrainOptions
from ld3_cli.models.examples import GaussianDenoiser
from ld3_cli.solvers import solve
from ld3_cli.solvers.sampler import Sampler
from ld3_cli.schedules import discretize
from ld3_cli.store import load_tensors, read_metadata, save_tensors

OPTS = dict(batch_size=3, iters_phase1=4, iters_phase2=4, iters_phase3=6, loss="l2", seed=5,
            learn=("steps", "offsets", "coefficients"))


class Counting(GaussianDenoiser):
    """The Gaussian denoiser, counting its calls."""

    def __init__(self):
        super().__init__(shape=(1, 4, 4))
        self.calls = 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        return super().forward(x, sigma, cond)


@pytest.fixture(scope="module")
def pairs():
    model = GaussianDenoiser(shape=(1, 4, 4))
    noises = torch.randn(12, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = solve("unipc", model, noises * 80, discretize("logsnr", 30, model.schedule), order=3)
    return noises, targets


def trainer_for(pairs, **changes):
    return LD3Trainer(Counting(), "unipc", {"order": 3}, 5, *pairs, options=TrainOptions(**{**OPTS, **changes}))


def stopped_at(pairs, iteration: int) -> LD3Trainer:
    """A trainer whose run stopped at the validation after ``iteration`` iterations (phase 3 validates every 5th:
    10 is inside it)."""
    tr = trainer_for(pairs)

    class Stop(Exception):
        pass

    def checkpoint(t):
        if t.state.iteration == iteration:
            raise Stop

    with pytest.raises(Stop):
        tr.run(checkpoint=checkpoint)
    return tr


def same(a, b) -> bool:
    """Equal values, tensors, generators and samplers compared by content."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, torch.Generator):
        return torch.equal(a.get_state(), b.get_state())
    if isinstance(a, Sampler):
        return same(a.tensors(), b.tensors()) and a.plain() == b.plain()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def saved_copy(trainer) -> tuple[dict, dict]:
    """The state as a file would hold it: cloned tensors, plain data through JSON."""
    tensors, info = trainer.dump_state()
    return {k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(info))


def test_the_state_round_trips_field_by_field(pairs):
    """Mid phase 3 (Adam's state, the ended phases' samplers, a mid-epoch order): dump -> JSON -> load gives
    a state whose every field equals the original's."""
    tr = stopped_at(pairs, 10)
    assert tr.phases[tr.state.phase_index].coefficients and tr.state.phase_ends and tr.state.epoch_order is not None
    tensors, info = saved_copy(tr)
    assert info["state_format"] == STATE_FORMAT and info["iteration"] == 10 and len(info["history"]) == 10
    resumed = trainer_for(pairs)
    resumed.load_state(tensors, info)
    assert resumed.state.params["steps"] is resumed.grid.logits  # the state holds the live tensors
    assert resumed.state.optimizers["coefficients.0"] is resumed.optimizers["coefficients.0"].state
    for f in dataclasses.fields(TrainerState):
        assert same(getattr(tr.state, f.name), getattr(resumed.state, f.name)), f.name
    assert resumed.denoiser.calls == 0  # nothing is scored again


def test_the_codec_round_trips_every_kind_of_field():
    sampler = Sampler("euler", torch.tensor([2.0, 1.0]))
    state = TrainerState(phase_names=["steps"], init_name="edm", baselines={"edm": {"val": 0.5, "sigmas": [2.0, 1.0]}},
                         params={"steps": torch.arange(3.0)}, optimizers={"steps": {"lr": 0.1, "b": torch.ones(2)}},
                         generator=torch.Generator().manual_seed(3), history=[{"loss": 1.0}],
                         phase_ends={"steps": {"best_val": 0.25, "sampler": sampler}})
    tensors, info = encode_state(state)
    assert set(tensors) == {"params.steps", "optimizers.steps.b", "generator", "phase_ends.steps.sampler.sigmas",
                            "phase_ends.steps.sampler.sigmas_eval"}
    back = decode_state(tensors, json.loads(json.dumps(info)))
    for f in dataclasses.fields(TrainerState):
        assert same(getattr(state, f.name), getattr(back, f.name)), f.name


def test_reading_the_state_has_no_side_effect(pairs):
    fresh = trainer_for(pairs)
    tensors, info = fresh.dump_state()  # before start(): scores nothing, builds nothing
    assert fresh.denoiser.calls == 0 and fresh.grid is None and info["init_name"] == "" and info["params"] == {}
    tr = stopped_at(pairs, 6)
    calls, generator = tr.denoiser.calls, tr.state.generator.get_state()
    first, second = saved_copy(tr), saved_copy(tr)
    assert same(first, second) and tr.denoiser.calls == calls and torch.equal(tr.state.generator.get_state(), generator)
    tr.state.history.append({"loss": 0.0})  # the dumped plain data is a copy
    assert len(first[1]["history"]) == 6


def test_a_state_of_another_format_or_run_is_refused_and_leaves_the_trainer_fresh(pairs, tmp_path):
    tensors, info = saved_copy(stopped_at(pairs, 6))
    trainer = trainer_for(pairs)
    cases = [({k: v for k, v in info.items() if k != "state_format"}, tensors, "format none"),
             ({**info, "state_format": "ld3-trainer-state/1"}, tensors, "format ld3-trainer-state/1"),
             ({k: v for k, v in info.items() if k != "history"}, tensors, "lacks history"),
             (info, {k: v for k, v in tensors.items() if k != "params.steps"}, "lacks its tensor params.steps"),
             ({**info, "phase_names": ["steps"]}, tensors, "has phases")]
    for bad_info, bad_tensors, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            trainer.load_state(bad_tensors, bad_info)
        assert trainer.grid is None and trainer.state.iteration == 0
    other = trainer_for(pairs, learn=("steps", "offsets"), iters_phase3=0)  # no coefficients: another run
    with pytest.raises(ConfigError, match="learns"):
        other.load_state(tensors, {**info, "phase_names": ["steps", "offsets"]})
    assert other.grid is None and other.state.iteration == 0
    # an old file (the format before this one) is treated as absent, with a warning
    save_tensors(tmp_path / "state.safetensors", {"eps": torch.zeros(2)}, metadata={"ld3_train_state": "{}"})
    assert TrainStateFile(tmp_path).restore(trainer) is False and trainer.grid is None


def test_the_state_file_resumes_exactly(pairs, tmp_path):
    """Through the file: captured mid-run, written, restored, finished -- the uninterrupted run's result."""
    full = trainer_for(pairs).run()
    tr, state_file = trainer_for(pairs), TrainStateFile(tmp_path, every_s=0.0)

    def checkpoint(t):
        state_file.capture(t)
        if t.state.iteration == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.run(checkpoint=checkpoint)
    assert json.loads(read_metadata(state_file.path)["ld3_train_state"])["iteration"] == 7
    assert "params.steps" in load_tensors(state_file.path)
    resumed = trainer_for(pairs)
    assert TrainStateFile(tmp_path).restore(resumed)
    res = resumed.run()
    assert torch.equal(res.sigmas, full.sigmas) and torch.equal(res.sigmas_eval, full.sigmas_eval)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in full.history] and res.best_val == full.best_val
