"""Doc-test helpers: a store that already holds the mixture fit, and the tiny budgets appended to real runs."""
import shutil

import pytest

# Small budgets: a stage of the pipeline on the embedded default in about a second.
TINY = ["teacher.n=8", "teacher.nfe=12", "teacher.check_n=2", "train.iters_phase1=3", "train.iters_phase2=3",
        "sample.n=40", "sample.shard_size=16", "sample.batch_size=16", "eval.exact_n=64", "eval.heldout_n=4",
        "progress=false"]


@pytest.fixture(scope="session")
def fitted_store(tmp_path_factory):
    """A store root holding the MNIST-5k mixture fit (copied per test instead of refitting)."""
    from ld3_cli.models.mnist_gmm import load_or_fit

    root = tmp_path_factory.mktemp("docs-fit")
    load_or_fit(128, root)
    return root


@pytest.fixture
def store(tmp_path, fitted_store):
    dst = tmp_path / "cache"
    shutil.copytree(fitted_store, dst)
    return dst
