"""Helpers for the performance tests: tiny denoisers with non-trivial outputs."""
from __future__ import annotations

import torch

from ld3_cli.models.edm.loader import random_network
from ld3_cli.models.mnist_gmm import GaussianMixtureDenoiser, fit_mixture

# a DDPM++/VP network of the CIFAR-10 family, shrunk: 8x8 images, 16 channels, one block per level
TINY_EDM = {"img_resolution": 8, "img_channels": 3, "label_dim": 0, "model_type": "SongUNet", "model_channels": 16,
            "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4], "augment_dim": 9, "dropout": 0.13,
            "embedding_type": "positional", "encoder_type": "standard", "decoder_type": "standard",
            "channel_mult_noise": 1, "resample_filter": [1, 1]}


def tiny_edm(seed: int = 0):
    """A tiny VP-preconditioned SongUNet whose every weight is seeded noise.

    EDM initialises the output convolutions with weight 1e-5, so a freshly built network returns
    ``F ~ 0``; refilling all weights makes the network term ``c_out F`` large enough to compare.
    """
    net = random_network("VPPrecond", TINY_EDM, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters(), key=lambda kv: kv[0]):
            fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return net.eval().requires_grad_(False)


def tiny_gmm(seed: int = 0, conditional: bool = False) -> GaussianMixtureDenoiser:
    """A 3-component mixture denoiser on 28x28 images fitted to random data (rank 4): cheap and exact."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(40)
    images = (torch.rand(120, 1, 28, 28, generator=g) * 2 - 1) * 0.3 + labels.view(-1, 1, 1, 1) * 0.2 - 0.2
    return GaussianMixtureDenoiser(fit_mixture(images, labels, rank=4), conditional=conditional)
