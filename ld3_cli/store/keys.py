"""Artifact keys: a short hash of exactly the settings that determine an artifact.

``make_key(fields)`` hashes a canonical JSON rendering (sorted keys, floats by ``repr``,
tuples as lists, OmegaConf containers resolved), so two configs that differ only in
settings that do not enter ``fields`` share an artifact, and any change to a field gives a
new key.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ..utils.plain import to_plain

KEY_LENGTH = 12


def canonical_json(obj: Any) -> str:
    def norm(o):
        if isinstance(o, float):
            if math.isnan(o) or math.isinf(o):
                return repr(o)
            return float(repr(o)) if o != int(o) else int(o) if abs(o) < 2 ** 53 else o
        if isinstance(o, dict):
            return {k: norm(v) for k, v in o.items()}
        if isinstance(o, list):
            return [norm(v) for v in o]
        return o

    return json.dumps(norm(to_plain(obj)), sort_keys=True, separators=(",", ":"))


def without_neutral(fields: dict, neutral_settings: dict) -> dict:
    """``fields`` less the settings at their neutral values (``{name: (values...)}``): settings added after keys were
    made stay out of a key at the values every earlier run had, so those keys stay valid."""
    return {k: v for k, v in fields.items() if not (k in neutral_settings and v in neutral_settings[k])}


def make_key(fields: Any) -> str:
    """Short hex digest of ``fields`` (any JSON-able structure)."""
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:KEY_LENGTH]
