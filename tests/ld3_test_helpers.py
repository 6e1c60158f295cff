"""Helpers shared by several test folders (importable because tests/ holds the root conftest.py)."""
import torch


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
