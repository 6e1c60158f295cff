"""``train.restarts``: an interrupt inside a later restart loses nothing, and the rerun ends where an uninterrupted run
does (every restart keeps its own saved state)."""
from __future__ import annotations

import json

from reliability_testlib import only_artifact, run_cli

from ld3_cli.ld3.restarts import restart_seed
from ld3_cli.ld3.trainer import LD3Trainer


def test_train_interrupted_in_its_second_restart_resumes_to_the_same_artifact(store_copy, monkeypatch, capsys):
    ref, cache = store_copy("teacher-sample", "ref"), store_copy("teacher-sample", "cut")
    assert run_cli("train", "train.restarts=2", cache=ref) == 0
    assert "restarts (validation after LD3's phases): seed 0 " in capsys.readouterr().out
    step, calls, cut = LD3Trainer._iteration, [], [25]  # at iteration 5 of the second restart (20 each)

    def interrupted(self, phase, clock_start):
        calls.append(self.options.seed)
        if len(calls) in cut:
            raise KeyboardInterrupt
        return step(self, phase, clock_start)

    monkeypatch.setattr(LD3Trainer, "_iteration", interrupted)
    assert run_cli("train", "train.restarts=2", cache=cache) == 130
    assert calls[19] == restart_seed(0, 0) and calls[24] == restart_seed(0, 1)
    part = next(cache.glob("*/schedules/*.partial"))
    assert {p.name for p in part.glob("state*.safetensors")} == {"state.safetensors", "state-restart1.safetensors"}
    calls.clear(), cut.clear()
    assert run_cli("train", "train.restarts=2", cache=cache) == 0
    assert calls == [restart_seed(0, 1)] * 16  # only what was left: restart 1 from its 5th iteration
    ours, theirs = only_artifact(cache, "schedules"), only_artifact(ref, "schedules")
    assert ours.name == theirs.name
    for name in ("tensors.safetensors", "schedule.json"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    info = json.loads((ours / "manifest.json").read_text())["info"]
    assert [r["seed"] for r in info["restarts"]] == [0, restart_seed(0, 1)]
    assert sum(r["kept"] for r in info["restarts"]) == 1
    assert info["best_val"] == min(r["best_val"] for r in info["restarts"])
