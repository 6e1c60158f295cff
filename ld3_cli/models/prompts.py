"""Text prompts for text-to-image models: loading, per-seed choice, and the prompt-index condition.

A text model's condition batch is a ``[B]`` long tensor of *prompt indices* into the
model's prompt list (``-1`` = the negative / empty prompt used as the unconditional half
of classifier-free guidance).  Indices are small, exact and storable in safetensors next to
the teacher samples; the model turns them into text-encoder embeddings when it is called
(see ``DiffusersDenoiser.encode_prompts``).

Prompt sources (``model.prompts`` or ``model.prompts_file``):

* a list of strings in the config;
* a ``.txt`` file, one prompt per line (blank lines skipped);
* a ``.json`` file: MS-COCO captions (``{"annotations": [{"caption": ...}, ...]}``, captions
  in file order) or a plain JSON list of strings.

Choice per seed (``model.prompt_selection``): ``cycle`` (default) gives seed ``s`` the prompt
``s mod P`` -- seeds ``0..P-1`` use every prompt once, as in COCO-style FID evaluation;
``random`` draws an index uniformly with a generator seeded by the seed
(plus ``SEED_SHIFTS.prompt``, :mod:`ld3_cli.data.seeds`).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.seeds import SEED_SHIFTS
from ..errors import ConfigError, MissingFileError

NULL_PROMPT = -1
SELECTIONS = ("cycle", "random")


def read_prompts_file(path: str | Path, url: str | None = None) -> list[str]:
    """Prompts from a ``.txt`` (one a line) or ``.json`` (COCO captions or a list) file; ``url`` is named if missing."""
    p = Path(path).expanduser()
    if not p.is_file():
        where = f"download {url} and unpack it so the file is at {p}" if url else f"create {p}"
        raise MissingFileError(f"prompts file {p} not found; {where} (one prompt per line, or an MS-COCO "
                               "captions JSON), or set model.prompts=[...] instead")
    if p.suffix.lower() == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("annotations"), list):
            prompts = [str(a["caption"]).strip() for a in data["annotations"] if isinstance(a, dict) and "caption" in a]
        elif isinstance(data, list) and all(isinstance(s, str) for s in data):
            prompts = [s.strip() for s in data]
        else:
            raise ConfigError(f"{p} is neither an MS-COCO captions file ({{'annotations': [{{'caption': ...}}]}}) "
                              "nor a JSON list of strings")
    else:
        prompts = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    prompts = [s for s in prompts if s]
    if not prompts:
        raise ConfigError(f"prompts file {p} holds no prompts")
    return prompts


class PromptBank:
    """An ordered prompt list plus the negative prompt; maps seeds to indices and indices to text.

    Args:
        prompts: the prompts (index ``i`` -> ``prompts[i]``).
        negative: the prompt for index :data:`NULL_PROMPT` (``""`` = the empty prompt).
        selection: ``cycle`` or ``random`` (see module docstring).
    """

    def __init__(self, prompts: Sequence[str], negative: str = "", selection: str = "cycle"):
        if not prompts:
            raise ConfigError("a text-conditioned model needs prompts; set model.prompts=[...] or "
                              "model.prompts_file=<.txt or COCO captions .json>")
        if selection not in SELECTIONS:
            raise ConfigError(f"model.prompt_selection '{selection}' is unknown; choose one of {SELECTIONS}")
        self.prompts = [str(p) for p in prompts]
        self.negative = str(negative)
        self.selection = selection

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, seeds: torch.Tensor) -> torch.Tensor:
        """``[B]`` seeds -> ``[B]`` long prompt indices, a pure function of each seed."""
        n = len(self.prompts)
        out = []
        for s in seeds.reshape(-1).tolist():
            if self.selection == "cycle":
                out.append(int(s) % n)
            else:
                g = torch.Generator().manual_seed(int(s) + SEED_SHIFTS.prompt)
                out.append(int(torch.randint(n, (1,), generator=g).item()))
        return torch.tensor(out, dtype=torch.long)

    def texts(self, indices: torch.Tensor) -> list[str]:
        """Prompt indices -> strings (``-1`` -> the negative prompt)."""
        out = []
        for i in indices.reshape(-1).tolist():
            if i == NULL_PROMPT:
                out.append(self.negative)
            elif 0 <= i < len(self.prompts):
                out.append(self.prompts[i])
            else:
                raise ConfigError(f"prompt index {i} is outside the {len(self.prompts)} configured prompts; "
                                  "the stored conditions were drawn with another prompt list")
        return out

    @classmethod
    def from_config(cls, cfg: dict) -> PromptBank | None:
        """From ``model.prompts`` / ``model.prompts_file`` (+ ``model.prompts_url``) / ``model.negative_prompt`` /
        ``model.prompt_selection`` / ``model.max_prompts``; None when neither source is set."""
        if cfg.get("prompts") is not None and cfg.get("prompts_file"):
            raise ConfigError("set only one of model.prompts and model.prompts_file")
        if cfg.get("prompts") is not None:
            raw = cfg["prompts"]
            prompts = [raw] if isinstance(raw, str) else [str(p) for p in raw]
        elif cfg.get("prompts_file"):
            prompts = read_prompts_file(cfg["prompts_file"], url=cfg.get("prompts_url"))
        else:
            return None
        if cfg.get("max_prompts"):
            prompts = prompts[: int(cfg["max_prompts"])]
        return cls(prompts, negative=cfg.get("negative_prompt") or "",
                   selection=cfg.get("prompt_selection") or "cycle")
