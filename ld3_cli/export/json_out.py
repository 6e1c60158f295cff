"""``schedule.json``: the full record (sigmas, sigmas_eval, native t, lambdas, solver, NFE, provenance).

``json.dumps`` writes floats with ``repr``, so reading the file back gives the exported
float64 values bit for bit.  The file also reads as a ``custom`` discretization
(``discretize("custom", N, schedule, path="schedule.json")`` picks up ``sigmas``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .record import RECORD_FORMAT, ExportSchedule

REQUIRED_KEYS = ("sigmas", "sigmas_eval", "t", "t_eval", "lambdas", "solver", "nfe", "model", "provenance")


def schedule_json(es: ExportSchedule) -> str:
    return json.dumps(es.record(), indent=2) + "\n"


def load_schedule_json(path: str | os.PathLike) -> dict:
    """Read and check an exported ``schedule.json`` (lists of equal length, decreasing positive sigmas)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"exported schedule {p} not found; write it with `ld3 export export.format=json`")
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p} is not readable JSON ({e}); re-export it with `ld3 export`") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ConfigError(f"{p} is not an ld3 schedule export (no \"format\": \"{RECORD_FORMAT}\"); re-export it")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{p} lacks {missing}; re-export it with `ld3 export`")
    n = len(data["sigmas"])
    if any(len(data[k]) != n for k in ("sigmas_eval", "t", "t_eval", "lambdas")):
        raise ConfigError(f"{p}: sigmas, sigmas_eval, t, t_eval and lambdas differ in length; re-export it")
    s = data["sigmas"]
    if n < 2 or any(v <= 0 for v in s) or any(b >= a for a, b in zip(s, s[1:])):
        raise ConfigError(f"{p}: sigmas are not strictly decreasing and positive; re-export it")
    return data
