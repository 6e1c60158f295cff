"""Tiny, randomly initialised diffusers pipelines saved with save_pretrained (no network access)."""
from __future__ import annotations

import json
import string

import pytest
import torch
from ld3_test_helpers import single_thread  # noqa: F401 - autouse fixture: tiny models, one thread


def _perturb(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random init plus noise on every parameter, so zero-initialised output layers do not make outputs trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module.eval()


def _tiny_unet(in_ch=3, size=8, **kw):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return _perturb(UNet2DModel(sample_size=size, in_channels=in_ch, out_channels=in_ch, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw), 1)


def _tiny_kl(latent=4):
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return _perturb(AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent,
                                  down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                  up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                                  layers_per_block=1, norm_num_groups=4, sample_size=16), 2)


def _write_clip_tokenizer(folder, max_len=16):
    """A CLIP BPE tokenizer from a tiny hand-written vocabulary (letters, no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_len)
    return tok, len(vocab)


@pytest.fixture(scope="session")
def diffusers_mod():
    return pytest.importorskip("diffusers")


@pytest.fixture(scope="session")
def ddpm_dir(tmp_path_factory, diffusers_mod):
    """google/ddpm-cifar10-32 layout: unet/ + scheduler/ + model_index.json."""
    from diffusers import DDPMPipeline, DDPMScheduler

    d = tmp_path_factory.mktemp("ddpm") / "ddpm-tiny"
    DDPMPipeline(unet=_tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def ldm_dir(tmp_path_factory, diffusers_mod):
    """Unconditional LDM: unet/ (latents 3x8x8) + vqvae/ (f=2) + a scaled_linear DDIM scheduler."""
    from diffusers import DDIMScheduler, LDMPipeline, VQModel

    torch.manual_seed(3)
    vq = _perturb(VQModel(in_channels=3, out_channels=3, latent_channels=3, num_vq_embeddings=16,
                          down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                          up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                          layers_per_block=1, norm_num_groups=4, sample_size=16), 4)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    d = tmp_path_factory.mktemp("ldm") / "ldm-tiny"
    LDMPipeline(vqvae=vq, unet=_tiny_unet(3, 8), scheduler=sched).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def dit_dir(tmp_path_factory, diffusers_mod):
    """DiT: class-conditional (10 classes, null label 10), learned sigma (8 = 2 x 4 output channels) + KL VAE."""
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(5)
    dit = _perturb(DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                         num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                         norm_num_groups=4), 6)
    d = tmp_path_factory.mktemp("dit") / "dit-tiny"
    DiTPipeline(transformer=dit, vae=_tiny_kl(), scheduler=DDIMScheduler()).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory, diffusers_mod):
    """Stable Diffusion 1.x layout: UNet2DConditionModel + CLIP text encoder/tokenizer + KL VAE + PNDM scheduler."""
    pytest.importorskip("transformers")
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    base = tmp_path_factory.mktemp("sd")
    tok, n_vocab = _write_clip_tokenizer(base / "tok-src")
    torch.manual_seed(7)
    text = _perturb(CLIPTextModel(CLIPTextConfig(vocab_size=n_vocab, hidden_size=12, intermediate_size=16,
                                                 num_hidden_layers=1, num_attention_heads=2,
                                                 max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                                 pad_token_id=1)), 8)
    unet = _perturb(UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                         block_out_channels=(8, 16),
                                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                                         norm_num_groups=4, attention_head_dim=4), 9)
    sched = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    d = base / "sd-tiny"
    StableDiffusionPipeline(vae=_tiny_kl(), text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def sd3_dir(tmp_path_factory, diffusers_mod):
    """Stable Diffusion 3 layout without T5: SD3 transformer + two CLIP encoders + KL VAE (with shift)
    + flow scheduler."""
    pytest.importorskip("transformers")
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    base = tmp_path_factory.mktemp("sd3")
    tok1, n_vocab = _write_clip_tokenizer(base / "t1")
    tok2, _ = _write_clip_tokenizer(base / "t2")
    encoders = []
    for i in range(2):
        torch.manual_seed(20 + i)
        encoders.append(_perturb(CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=n_vocab, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=8, bos_token_id=0, eos_token_id=1,
            pad_token_id=1)), 30 + i))
    torch.manual_seed(11)
    tr = _perturb(SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                        caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=16), 12)
    torch.manual_seed(13)
    vae = _perturb(AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, shift_factor=0.1, scaling_factor=1.5,
                                 down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                 up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, sample_size=16), 14)
    d = base / "sd3-tiny"
    StableDiffusion3Pipeline(transformer=tr, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                             text_encoder=encoders[0], tokenizer=tok1, text_encoder_2=encoders[1], tokenizer_2=tok2,
                             text_encoder_3=None, tokenizer_3=None).save_pretrained(d)
    return d
