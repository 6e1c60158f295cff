"""Conditional diffusers models: DiT (class labels, learned sigma), Stable Diffusion 1.x (CLIP prompts),
Stable Diffusion 3 (flow matching), each with classifier-free guidance, against manual conversions."""
from __future__ import annotations

import pytest
import torch

from ld3_cli.models import BuildContext, build_model
from ld3_cli.models.diffusers import DiffusersDenoiser, alphas_cumprod_from_config
from ld3_cli.models.guidance import CFGDenoiser
from ld3_cli.schedules.noise import FlowMatching

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SIGMA = torch.tensor([0.05, 0.6, 2.5, 11.0], dtype=torch.float64)


def _x(shape, seed=0):
    return torch.randn(len(SIGMA), *shape, generator=torch.Generator().manual_seed(seed))


def _vp_inputs(model):
    t = model.schedule.t(SIGMA)
    a = (1 + SIGMA ** 2).rsqrt().float().view(-1, 1, 1, 1)
    return t, a, SIGMA.float().view(-1, 1, 1, 1)


class CallCounter:
    def __init__(self, module):
        self.batches = []
        module.register_forward_hook(lambda m, args, kwargs, out: self.batches.append(
            (args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))).shape[0]), with_kwargs=True)


# -- DiT ---------------------------------------------------------------------------------------
def test_dit_learned_sigma_class_labels_and_cfg(dit_dir):
    from diffusers import DiTTransformer2DModel

    tr = DiTTransformer2DModel.from_pretrained(dit_dir / "transformer").eval()
    plain = build_model({"kind": "diffusers", "path": str(dit_dir)}, BuildContext())
    assert isinstance(plain, DiffusersDenoiser)
    assert plain.condition.kind == "class" and plain.condition.num_classes == 10
    assert plain.condition.extra["null_label"] == 10
    assert plain.shape == (4, 8, 8) and plain.image_shape == (3, 16, 16)
    labels = plain.draw_conditions(torch.arange(4))
    assert labels.dtype == torch.long and labels.min() >= 0 and labels.max() < 10
    x = _x((4, 8, 8))
    t, a, s = _vp_inputs(plain)
    with torch.no_grad():
        full = tr(a * x, timestep=t.float(), class_labels=labels).sample
        full_u = tr(a * x, timestep=t.float(), class_labels=torch.full_like(labels, 10)).sample
    assert full.shape[1] == 8                                  # learned sigma: eps is the first 4 channels
    eps_c, eps_u = full[:, :4], full_u[:, :4]
    torch.testing.assert_close(plain(x, SIGMA, labels), x - s * eps_c, rtol=1e-5, atol=2e-5)

    guided = build_model({"kind": "diffusers", "path": str(dit_dir), "guidance_scale": 4.0}, BuildContext())
    assert isinstance(guided, CFGDenoiser) and guided.condition.guidance_scale == 4.0
    counter = CallCounter(guided.inner.net)
    out = guided(x, SIGMA, labels)
    assert counter.batches == [8]                               # one batched call: [cond; null]
    # CFG on x0 equals DiT's guidance on eps
    torch.testing.assert_close(out, x - s * (eps_u + 4.0 * (eps_c - eps_u)), rtol=1e-5, atol=5e-5)
    one = build_model({"kind": "diffusers", "path": str(dit_dir), "guidance_scale": 1.0}, BuildContext())
    torch.testing.assert_close(one(x, SIGMA, labels), plain(x, SIGMA, labels), rtol=0, atol=0)


def test_flow_kind_with_a_diffusers_transformer(dit_dir):
    """kind: flow with a diffusers transformer directory: x_t = (1-t) x, fed 1000 t, x0 = x_t - t v."""
    from diffusers import DiTTransformer2DModel

    tr = DiTTransformer2DModel.from_pretrained(dit_dir / "transformer").eval()
    model = build_model({"kind": "flow", "diffusers": {"path": str(dit_dir), "subfolder": "transformer"},
                         "num_classes": 10, "null_label": 10}, BuildContext())
    assert isinstance(model.schedule, FlowMatching) and model.shape == (4, 8, 8)
    labels = torch.tensor([1, 5, 9, 0])
    x = _x((4, 8, 8), 2)
    t = (SIGMA / (1 + SIGMA)).float().view(-1, 1, 1, 1)
    with torch.no_grad():
        v = tr((1 - t) * x, timestep=1000 * t.view(-1), class_labels=labels).sample[:, :4]
    torch.testing.assert_close(model(x, SIGMA, labels), (1 - t) * x - t * v, rtol=1e-5, atol=2e-5)


# -- Stable Diffusion 1.x -----------------------------------------------------------------------
PROMPTS = ["a cat", "a red house", "mountains at dawn"]


def _sd_reference(sd_dir):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(sd_dir / "tokenizer")
    enc = CLIPTextModel.from_pretrained(sd_dir / "text_encoder").eval()
    unet = UNet2DConditionModel.from_pretrained(sd_dir / "unet").eval()

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0]
    return embed, unet


def test_sd_prompts_embeddings_and_denoiser(sd_dir):
    embed, unet = _sd_reference(sd_dir)
    model = build_model({"kind": "diffusers", "path": str(sd_dir), "prompts": PROMPTS}, BuildContext())
    assert model.condition.kind == "text" and model.shape == (4, 8, 8) and model.image_shape == (3, 16, 16)
    idx = model.draw_conditions(torch.tensor([0, 4, 5, 2]))
    assert idx.tolist() == [0, 1, 2, 2]
    assert model.prompt_texts(idx) == [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[2]]
    emb = embed([PROMPTS[i] for i in idx.tolist()])
    torch.testing.assert_close(model.encode_prompts(model.prompt_texts(idx))["encoder_hidden_states"], emb,
                               rtol=1e-6, atol=1e-6)
    x = _x((4, 8, 8), 3)
    t, a, s = _vp_inputs(model)
    with torch.no_grad():
        eps = unet(a * x, t.float(), encoder_hidden_states=emb).sample
    expected = x - s * eps
    torch.testing.assert_close(model(x, SIGMA, idx), expected, rtol=1e-5, atol=2e-5)
    # the same condition given as embeddings or as a dict of network keywords
    torch.testing.assert_close(model(x, SIGMA, emb), expected, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(model(x, SIGMA, {"encoder_hidden_states": emb}), expected, rtol=1e-5, atol=2e-5)
    # the scheduler is scaled_linear 0.00085..0.012: SD's sigma_max
    ac = alphas_cumprod_from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
    assert model.schedule.sigma_max == pytest.approx(float(((1 - ac[-1]) / ac[-1]).sqrt()), rel=1e-12)


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_sd_cfg_with_empty_or_negative_prompt(sd_dir, negative):
    embed, unet = _sd_reference(sd_dir)
    cfg = {"kind": "diffusers", "path": str(sd_dir), "prompts": PROMPTS, "guidance_scale": 7.5}
    if negative:
        cfg["negative_prompt"] = negative
    model = build_model(cfg, BuildContext())
    idx = torch.tensor([2, 0, 1, 0])
    x = _x((4, 8, 8), 4)
    t, a, s = _vp_inputs(model)
    emb_c = embed([PROMPTS[i] for i in idx.tolist()])
    emb_u = embed([negative or ""] * 4)
    with torch.no_grad():
        eps_c = unet(a * x, t.float(), encoder_hidden_states=emb_c).sample
        eps_u = unet(a * x, t.float(), encoder_hidden_states=emb_u).sample
    counter = CallCounter(model.inner.net)
    out = model(x, SIGMA, idx)
    assert counter.batches == [8]
    torch.testing.assert_close(out, x - s * (eps_u + 7.5 * (eps_c - eps_u)), rtol=1e-5, atol=1e-4)
    # guidance with embedding conditions (uncond = the encoded negative prompt) agrees
    torch.testing.assert_close(model(x, SIGMA, emb_c), out, rtol=1e-5, atol=1e-4)
    # decode: the KL VAE on latents / scaling_factor, clamped to [-1, 1]
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(sd_dir / "vae").eval()
    with torch.no_grad():
        img = vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(model.decode(x), img, rtol=1e-5, atol=1e-5)


def test_sd_prompts_file_and_missing_prompts(sd_dir, tmp_path):
    from ld3_cli.errors import ConfigError

    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    model = build_model({"kind": "diffusers", "path": str(sd_dir), "prompts_file": str(f)}, BuildContext())
    assert model.prompts.prompts == PROMPTS
    with pytest.raises(ConfigError, match="prompts"):
        build_model({"kind": "diffusers", "path": str(sd_dir)}, BuildContext())


# -- Stable Diffusion 3 (flow matching) ----------------------------------------------------------
def test_sd3_flow_transformer_prompts_and_cfg(sd3_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(sd3_dir, text_encoder_3=None, tokenizer_3=None)
    model = build_model({"kind": "diffusers", "path": str(sd3_dir), "prompts": PROMPTS, "max_sequence_length": 8,
                         "guidance_scale": 3.0}, BuildContext())
    assert isinstance(model.schedule, FlowMatching) and model.inner.prediction == "flow"
    ref_sched = FlowMatchEulerDiscreteScheduler.from_pretrained(sd3_dir / "scheduler")
    assert model.schedule.t_min == pytest.approx(float(ref_sched.sigma_min), rel=1e-6)   # shift 3 applied
    assert model.shape == (4, 8, 8) and model.image_shape == (3, 16, 16)
    idx = torch.tensor([1, 2, 0, 1])
    with torch.no_grad():
        e_c, _, p_c, _ = pipe.encode_prompt([PROMPTS[i] for i in idx.tolist()], None, None,
                                            do_classifier_free_guidance=False, max_sequence_length=8)
        e_u, _, p_u, _ = pipe.encode_prompt([""] * 4, None, None, do_classifier_free_guidance=False,
                                            max_sequence_length=8)
        x = _x((4, 8, 8), 5)
        t = (SIGMA / (1 + SIGMA)).float().view(-1, 1, 1, 1)
        x_t = (1 - t) * x
        v_c = pipe.transformer(hidden_states=x_t, timestep=1000 * t.view(-1), encoder_hidden_states=e_c,
                               pooled_projections=p_c).sample
        v_u = pipe.transformer(hidden_states=x_t, timestep=1000 * t.view(-1), encoder_hidden_states=e_u,
                               pooled_projections=p_u).sample
    d_c, d_u = x_t - t * v_c, x_t - t * v_u
    torch.testing.assert_close(model.inner(x, SIGMA, idx), d_c, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(model(x, SIGMA, idx), d_u + 3.0 * (d_c - d_u), rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        img = pipe.vae.decode(x / 1.5 + 0.1).sample.clamp(-1, 1)          # scaling 1.5, shift 0.1
    torch.testing.assert_close(model.decode(x), img, rtol=1e-5, atol=1e-5)


def test_dit_saved_as_legacy_transformer2dmodel_loads_the_same(dit_dir, tmp_path):
    """facebook/DiT-XL-2-256 names its network Transformer2DModel; diffusers maps it to DiTTransformer2DModel."""
    import json
    import shutil

    d = tmp_path / "legacy"
    shutil.copytree(dit_dir, d)
    for path, key in ((d / "transformer" / "config.json", "_class_name"), (d / "model_index.json", "transformer")):
        conf = json.loads(path.read_text())
        conf[key] = "Transformer2DModel" if key == "_class_name" else ["diffusers", "Transformer2DModel"]
        path.write_text(json.dumps(conf))
    a = build_model({"kind": "diffusers", "path": str(dit_dir)}, BuildContext())
    b = build_model({"kind": "diffusers", "path": str(d)}, BuildContext())
    x, labels = _x((4, 8, 8), 6), torch.tensor([3, 3, 7, 10])
    assert b.condition.num_classes == 10
    torch.testing.assert_close(b(x, SIGMA, labels), a(x, SIGMA, labels), rtol=0, atol=0)
