"""Shared test fixtures: paths to ../shared (present in CI, absent in a user's clone)."""
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads (see cli/main.py)

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
