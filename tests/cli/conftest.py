"""CLI test helpers: run ``ld3`` in-process with a small, fast configuration in a temporary store."""
import shutil

import pytest

from ld3_cli.cli.main import main

# small budgets: every stage of the pipeline in a few seconds on the embedded default
TINY = ["teacher.n=8", "teacher.nfe=12", "teacher.check_n=2", "train.iters_phase1=3", "train.iters_phase2=3",
        "sample.n=40", "sample.shard_size=16", "sample.batch_size=16", "eval.exact_n=64", "eval.heldout_n=4",
        "progress=false"]


@pytest.fixture(scope="session")
def fitted_cache(tmp_path_factory):
    """A store holding the mixture fit, so each test copies it instead of refitting."""
    from ld3_cli.models.mnist_gmm import load_or_fit

    root = tmp_path_factory.mktemp("fit-cache")
    load_or_fit(128, root)
    return root


@pytest.fixture
def cache(tmp_path, fitted_cache):
    dst = tmp_path / "cache"
    shutil.copytree(fitted_cache, dst)
    return dst


@pytest.fixture
def ld3(cache, monkeypatch, tmp_path):
    """Call ``ld3 <args>`` in-process from tmp_path with the tiny config; returns the exit status."""
    monkeypatch.chdir(tmp_path)

    def run(*args, tiny=True):
        extra = (TINY if tiny else []) + [f"cache_dir={cache}"]
        args = list(args)
        stage, rest = args[0], args[1:]
        return main([stage, *rest, *extra]) if stage not in ("--help", "-h") else main(args)

    return run
