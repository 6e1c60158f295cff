"""Choose formats and write the export files (each one atomically)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

from ..errors import ConfigError
from ..store import atomic_write_text
from .comfyui_out import comfyui_json, comfyui_text
from .diffusers_out import diffusers_snippet
from .json_out import schedule_json
from .kdiffusion_out import kdiffusion_snippet
from .record import ExportSchedule
from .runner_out import runner_script

# format -> {file name: text maker (schedule, model path)}; FORMATS and FILES derive from it
_MAKERS = {
    "json": {"schedule.json": lambda es, _: schedule_json(es), "ld3_sampler.py": lambda es, _: runner_script(es)},
    "diffusers": {"diffusers_snippet.py": diffusers_snippet},
    "kdiffusion": {"kdiffusion_sigmas.py": lambda es, _: kdiffusion_snippet(es)},
    "comfyui": {"comfyui_sigmas.txt": lambda es, _: comfyui_text(es),
                "comfyui_sigmas.json": lambda es, _: comfyui_json(es)},
}
FORMATS = tuple(_MAKERS)
FILES = {f: tuple(makers) for f, makers in _MAKERS.items()}


def parse_formats(spec) -> list[str]:
    """``all``, one format name, a comma-separated string or a list -> the formats, in FORMATS order."""
    if spec is None:
        items: list[str] = ["all"]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip() for s in spec]
    bad = [s for s in items if s != "all" and s not in FORMATS]
    if bad or not items:
        raise ConfigError(f"export.format {bad or items!r} is not valid; use all or any of {', '.join(FORMATS)} "
                          "(e.g. export.format=diffusers or export.format=[json,comfyui])")
    if "all" in items:
        return list(FORMATS)
    return [f for f in FORMATS if f in items]


def export_texts(es: ExportSchedule, formats: Iterable[str], model_path: Optional[str] = None) -> dict[str, str]:
    """``{file name: text}`` for the chosen formats."""
    out: dict[str, str] = {}
    for f in formats:
        if f not in _MAKERS:
            raise ConfigError(f"unknown export format '{f}'; use any of {', '.join(FORMATS)}")
        out.update((name, make(es, model_path)) for name, make in _MAKERS[f].items())
    return out


def write_export(es: ExportSchedule, out_dir: Path, formats: Iterable[str],
                 model_path: Optional[str] = None) -> list[Path]:
    """Write the chosen formats into ``out_dir`` (created); every file appears complete or not at all."""
    texts = export_texts(es, formats, model_path)  # all text first: a failure writes nothing
    out_dir = Path(out_dir).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the export directory {out_dir} ({e}); choose another with "
                          "export.out=/some/dir") from None
    if not out_dir.is_dir():
        raise ConfigError(f"export.out={out_dir} is not a directory; choose a directory with export.out=/some/dir")
    paths = []
    for name, text in texts.items():
        p = out_dir / name
        atomic_write_text(p, text)
        paths.append(p)
    return paths
