"""CPU threads of a stage: one intra-op thread for small models unless LD3_THREADS says otherwise."""
import pytest
import torch

from ld3_cli.models.examples import GaussianDenoiser
from ld3_cli.stages.context import small_model_threads
from ld3_cli.utils.model_size import SMALL_MODEL_PARAMETERS


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv("LD3_THREADS", raising=False)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def test_a_small_model_on_the_cpu_gets_one_thread(two_threads):
    small_model_threads(GaussianDenoiser(), torch.device("cpu"))
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("case", ["large", "cuda", "LD3_THREADS"])
def test_otherwise_the_thread_count_is_left_alone(case, two_threads, monkeypatch):
    model = torch.nn.Linear(SMALL_MODEL_PARAMETERS, 1) if case == "large" else GaussianDenoiser()
    if case == "LD3_THREADS":
        monkeypatch.setenv("LD3_THREADS", "2")
    small_model_threads(model, torch.device("cuda" if case == "cuda" else "cpu"))
    assert torch.get_num_threads() == 2
