"""Shared test fixtures: paths to ../shared (present in CI, absent in a user's clone), a store holding
the embedded default's mixture fit."""
import os
import shutil
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads (see cli/main.py)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy starts its spinning BLAS threads (see cli/main.py)
# one torch thread per test process: the suite's models are tiny, and `make test` runs two workers on two cores
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DDPM_WEIGHTS = SHARED / "models" / "ddpm_mnist_yz" / "ddpm_mnist_starter.pth"


@pytest.fixture(scope="session")
def ddpm_weights() -> Path:
    if not DDPM_WEIGHTS.is_file():
        pytest.skip(f"the real MNIST DDPM weights are not here ({DDPM_WEIGHTS}); they live in the team's ../shared "
                    "folder, which CI has and a user's clone does not")
    return DDPM_WEIGHTS


@pytest.fixture(scope="session")
def fitted_cache(tmp_path_factory):
    """A store root holding the MNIST-5k mixture fit, made once per session (tests copy it, never refit)."""
    from ld3_cli.models.mnist_gmm import load_or_fit
    from ld3_cli.store import Store

    root = tmp_path_factory.mktemp("fit-cache")
    load_or_fit(128, Store(root).fit_cache())
    return root


@pytest.fixture
def cache(tmp_path, fitted_cache):
    """A private copy of ``fitted_cache`` at ``tmp_path/cache``."""
    dst = tmp_path / "cache"
    shutil.copytree(fitted_cache, dst)
    return dst
