"""Choose formats and write the export files (each one atomically).

Every format that runs what was learned brings the runner with it: ``schedule.json`` and ``ld3_sampler.py``
go with the k-diffusion sampler (``ld3_kdiffusion.py``) and the diffusers scheduler (``ld3_diffusers.py``),
and the ComfyUI node pack (``comfyui_ld3/``) holds its own copies, so one folder is all a user copies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from ..errors import ConfigError
from ..store import atomic_write_text
from .comfyui_out import comfyui_json, comfyui_text, comfyui_to_zero_text
from .diffusers_out import diffusers_snippet
from .json_out import schedule_json
from .kdiffusion_out import kdiffusion_snippet
from .record import ExportSchedule
from .runtime import runtime_source

Maker = Callable[[ExportSchedule, Optional[str]], Optional[str]]  # None: the file does not apply to this schedule


def _runtime(name: str) -> Maker:
    return lambda es, _: runtime_source(name)


_RUNNER: dict[str, Maker] = {"schedule.json": lambda es, _: schedule_json(es),
                             "ld3_sampler.py": _runtime("ld3_sampler.py")}
# format -> {file name (relative path): text maker (schedule, model path)}; FORMATS and FILES derive from it
_MAKERS: dict[str, dict[str, Maker]] = {
    "json": dict(_RUNNER),
    "diffusers": {"diffusers_snippet.py": diffusers_snippet, "ld3_diffusers.py": _runtime("ld3_diffusers.py"),
                  **_RUNNER},
    "kdiffusion": {"kdiffusion_sigmas.py": lambda es, _: kdiffusion_snippet(es),
                   "ld3_kdiffusion.py": _runtime("ld3_kdiffusion.py"), **_RUNNER},
    "comfyui": {"comfyui_sigmas.txt": lambda es, _: comfyui_text(es),
                "comfyui_sigmas_to_zero.txt": lambda es, _: comfyui_to_zero_text(es),
                "comfyui_sigmas.json": lambda es, _: comfyui_json(es),
                "comfyui_ld3/__init__.py": _runtime("comfyui_nodes.py"),
                "comfyui_ld3/ld3_sampler.py": _runtime("ld3_sampler.py"),
                "comfyui_ld3/ld3_kdiffusion.py": _runtime("ld3_kdiffusion.py"),
                "comfyui_ld3/schedules/{slug}.json": lambda es, _: schedule_json(es)},
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
    """``{relative file path: text}`` for the chosen formats (files that do not apply to ``es`` left out)."""
    out: dict[str, str] = {}
    for f in formats:
        if f not in _MAKERS:
            raise ConfigError(f"unknown export format '{f}'; use any of {', '.join(FORMATS)}")
        for name, make in _MAKERS[f].items():
            name = name.format(slug=es.slug())
            if name not in out:
                text = make(es, model_path)
                if text is not None:
                    out[name] = text
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
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, text)
        paths.append(p)
    return paths
