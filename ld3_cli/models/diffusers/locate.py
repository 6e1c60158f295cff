"""Finding a diffusers model directory and its components (local files; optional download)."""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError, MissingFileError

INSTALL_HINT = "pip install -e .[diffusers]"
NETWORK_COMPONENTS = ("unet", "transformer")
VAE_COMPONENTS = ("vae", "vqvae")


def require(package: str):
    """Import ``diffusers`` / ``transformers`` / ``huggingface_hub`` or raise a ConfigError with the fix."""
    try:
        return __import__(package)
    except ImportError as e:
        raise ConfigError(f"diffusers models need the optional package '{package}'; install the extra with "
                          f"`{INSTALL_HINT}`") from e


def hf_repo_id(url: str | None) -> str | None:
    """``https://huggingface.co/<org>/<name>[/...]`` -> ``<org>/<name>`` (None for other URLs)."""
    prefix = "https://huggingface.co/"
    if not url or not str(url).startswith(prefix):
        return None
    parts = str(url)[len(prefix):].strip("/").split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else None


def fetch_instructions(cfg: dict, path: Path) -> str:
    """How to obtain the directory ``path`` for this model config (one sentence)."""
    repo = cfg.get("repo_id") or hf_repo_id(cfg.get("url"))
    if repo:
        return (f"download {cfg.get('url') or repo} with `hf download {repo} --local-dir {path}` "
                f"(older huggingface_hub: `huggingface-cli download {repo} --local-dir {path}`)")
    if cfg.get("url"):
        return (f"download {cfg['url']} and convert it to a diffusers directory at {path} "
                "(see docs/models-diffusers.md)")
    return "set model.path to a diffusers model directory"


def resolve_model_dir(cfg: dict, allow_download: bool = False) -> Path:
    """The local model directory; MissingFileError (naming URL, path and fetch command) if absent."""
    if not cfg.get("path"):
        raise ConfigError("model.path is not set; point it at a local diffusers directory, "
                          "e.g. model.path=weights/ddpm-cifar10-32")
    path = Path(str(cfg["path"])).expanduser()
    if path.is_dir():
        return path
    repo = cfg.get("repo_id") or hf_repo_id(cfg.get("url"))
    if cfg.get("download") and allow_download and repo:
        hub = require("huggingface_hub")
        hub.snapshot_download(repo_id=repo, local_dir=str(path))
        return path
    name = cfg.get("name") or cfg.get("file_name") or path.name
    raise MissingFileError(f"diffusers model directory {path} for model '{name}' not found; "
                           f"{fetch_instructions(cfg, path)}, or set LD3_WEIGHTS / model.path to where it is")




def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); re-download the model directory") from e


def component_folder(root: Path, names: tuple[str, ...], index: dict) -> str | None:
    """The first of ``names`` that is a component (listed in model_index.json or a folder with a config)."""
    for n in names:
        entry = index.get(n)
        if isinstance(entry, (list, tuple)) and entry and entry[0] is None:
            continue
        if (root / n / "config.json").is_file() or (n in index and (root / n).is_dir()):
            return n
    return None

