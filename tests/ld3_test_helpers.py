"""Helpers shared by several test folders (importable because tests/ holds the root conftest.py)."""
import contextlib

import pytest
import torch

# Small budgets appended to real ``ld3`` runs on the embedded default: every stage in about a second.
TINY = ["teacher.n=8", "teacher.nfe=12", "teacher.check_n=2", "train.iters_phase1=3", "train.iters_phase2=3",
        "sample.n=40", "sample.shard_size=16", "sample.batch_size=16", "eval.exact_n=64", "eval.heldout_n=4",
        "progress=false"]


def random_fid_state_dict(seed=0):
    """Random FID-Inception weights in the real file's layout, scaled so activations stay O(1)."""
    from ld3_cli.metrics.inception import fid_inception_architecture

    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in fid_inception_architecture().state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = t.clone()
        elif t.ndim == 4:  # conv
            fan_in = t[0].numel()
            state[key] = torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("running_var", "bn.weight")):
            state[key] = 0.5 + torch.rand(t.shape, generator=g)
        else:  # bn bias / running_mean / fc
            state[key] = 0.1 * torch.randn(t.shape, generator=g)
    return state


@contextlib.contextmanager
def one_thread():
    """One torch intra-op thread and one BLAS thread, restored afterwards.

    Tiny networks and small eigendecompositions run fastest on one thread; on a busy 2-core machine two
    OpenMP/OpenBLAS threads made the mixture fit's 784x784 eigh tens of times slower.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - only a speed matter
        threadpool_limits = None
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def single_thread():
    """Autouse in the folders whose conftest imports it: each test runs under :func:`one_thread`."""
    with one_thread():
        yield
