"""The config's ``speed`` options reach the model every stage uses (and change no result where they cannot)."""
import csv
import json
import shutil

from ld3_test_helpers import TINY

from ld3_cli.cli.main import main


def _results(cache):
    with (cache / "results.csv").open() as f:
        return {(r["schedule"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}


def test_speed_options_wrap_the_stage_model(ld3, cache, fitted_cache, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(fitted_cache, plain)
    assert ld3("run", "speed.channels_last=true", "eval.compare=[ld3,edm]") == 0
    teachers = list(cache.glob("mnist_gmm-*/teacher/*/manifest.json"))  # training and held-out pairs
    assert len(teachers) == 2
    for manifest in teachers:
        speed = json.loads(manifest.read_text())["info"]["model"]["speed"]
        assert speed["channels_last"] is True and speed["autocast"] is None
    fast = _results(cache)
    assert ("ld3", "fd_exact") in fast  # the mixture's exact sampler is reached through the wrapper
    # channels_last does not enter the store key, and on the mixture (no convolutions) changes no number
    assert main(["run", "eval.compare=[ld3,edm]", *TINY, f"cache_dir={plain}"]) == 0
    assert _results(plain) == fast
