"""Performance tests run on one CPU thread (tiny networks are fastest and steadiest there on a shared machine)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread during each test; the previous count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
