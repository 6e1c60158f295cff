"""The model cache a command owns (stages/runner.py ModelCache): one build per model, no state between commands."""
from hydra import compose, initialize_config_dir

from ld3_cli.cli.apps import config_dir
from ld3_cli.stages.context import StageContext
from ld3_cli.stages.context import ModelCache

CUSTOM = ["model=custom", "model._target_=ld3_cli.models.examples.GaussianDenoiser", "+model.std=0.3", "device=cpu"]


def test_one_build_per_key_and_a_new_key_replaces_the_model():
    cache, built = ModelCache(), []

    def build(name):
        return lambda: built.append(name) or object()

    a = cache.get("a", build("a"))
    assert cache.get("a", build("a")) is a and built == ["a"]
    b = cache.get("b", build("b"))
    assert b is not a and built == ["a", "b"] and cache.builds == 2
    assert cache.get("a", build("a")) is not a and cache.builds == 3  # one model kept: "a" was let go


def _ctx(tmp_path, models=None, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("sample", overrides=[f"cache_dir={tmp_path}", *CUSTOM, *overrides])
    return StageContext(cfg, "sample", [], models)


def test_contexts_of_one_command_share_its_model_and_other_commands_do_not(tmp_path):
    shared = ModelCache()
    first, second = _ctx(tmp_path, shared), _ctx(tmp_path, shared, "nfe=4", "solver=euler")  # two jobs of a sweep
    assert first.model is second.model and shared.builds == 1
    other = _ctx(tmp_path)  # no cache given: a context of its own, nothing left from the command above
    assert other.model is not first.model and other.models.builds == 1 and shared.builds == 1
    changed = _ctx(tmp_path, shared, "model.std=0.5")  # another model key: built, replacing the first
    assert changed.model is not first.model and shared.builds == 2
