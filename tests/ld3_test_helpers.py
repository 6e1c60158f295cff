"""Helpers shared by several test folders (importable because tests/ holds the root conftest.py)."""
import contextlib
import os
from pathlib import Path

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


KDIFFUSION_DIR = Path(os.environ.get("LD3_KDIFFUSION_DIR",
                                    Path(__file__).resolve().parents[1] / ".venv" / "k-diffusion"))


def kdiffusion():
    """``(k_diffusion.sampling, k_diffusion.external)`` of the real k-diffusion 0.1.1.post1 that ``make install`` puts
    in ``.venv/k-diffusion`` (or ``$LD3_KDIFFUSION_DIR``), imported without the package ``__init__`` (which imports
    clip and wandb); the calling test skips when it is not there."""
    import importlib
    import sys
    import types

    root = KDIFFUSION_DIR / "k_diffusion"
    if not (root / "sampling.py").is_file():
        pytest.skip(f"k-diffusion is not installed at {KDIFFUSION_DIR} (`make install` puts it there; "
                    "LD3_KDIFFUSION_DIR=... points elsewhere)")
    if "k_diffusion" not in sys.modules:
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(root)]
        sys.modules["k_diffusion"] = package
        if str(KDIFFUSION_DIR) not in sys.path:
            sys.path.append(str(KDIFFUSION_DIR))  # torchsde, torchdiffeq, trampoline (installed beside it)
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


class CountingDenoiser(torch.nn.Module):
    """A smooth, state-dependent stand-in for a network in sigma-space (``D(x, sigma) -> x0``) that counts its calls."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sigma, cond=None):
        self.calls += 1
        s = sigma.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        return torch.tanh(0.3 * x) / (1 + s * s).sqrt() + 0.05 * x.mean(dim=(1, 2, 3), keepdim=True)
