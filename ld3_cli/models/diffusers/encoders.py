"""Prompt encoders: prompts -> the keyword tensors a text-conditioned diffusers network takes."""
from __future__ import annotations

import torch


class ClipPromptEncoder(torch.nn.Module):
    """Stable Diffusion 1.x / 2.x text conditioning: tokenizer + CLIP text model -> last hidden state.

    ``forward(prompts: list[str]) -> {"encoder_hidden_states": [B, L, D]}``; prompts are padded
    / truncated to the tokenizer's ``model_max_length`` (77 for CLIP).
    """

    def __init__(self, tokenizer, text_encoder):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    def forward(self, prompts: list[str]) -> dict:
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = tok.attention_mask.to(device) if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        out = self.text_encoder(tok.input_ids.to(device), attention_mask=mask)
        return {"encoder_hidden_states": out[0]}


class PipelinePromptEncoder(torch.nn.Module):
    """Multi-encoder pipelines (Stable Diffusion 3): the pipeline's own ``encode_prompt``.

    ``forward(prompts) -> {"encoder_hidden_states": [B, L, D], "pooled_projections": [B, P]}``.
    """

    def __init__(self, pipe, max_sequence_length: int = 256):
        super().__init__()
        self.pipe = pipe
        self.encoders = torch.nn.ModuleList(
            [m for m in (getattr(pipe, n, None) for n in ("text_encoder", "text_encoder_2", "text_encoder_3"))
             if m is not None])
        self.max_sequence_length = int(max_sequence_length)

    def forward(self, prompts: list[str]) -> dict:
        device = next(self.encoders[0].parameters()).device
        emb, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None, device=device,
                                                    num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                    max_sequence_length=self.max_sequence_length)
        return {"encoder_hidden_states": emb, "pooled_projections": pooled}
