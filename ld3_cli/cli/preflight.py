"""Check a stage's overrides before Hydra runs it, so mistakes cost one clear line and exit 2.

Every job of a sweep is checked (each value of each swept override once), by composing the
config with the Compose API and running the stage's cheap semantic checks
(:func:`ld3_cli.stages.checks.check_config`): nothing is loaded or written.
"""
from __future__ import annotations

import itertools
import re
from typing import Optional

from .apps import config_dir


def _expand(overrides: list[str]) -> tuple[list[list[str]], Optional[str]]:
    """Probe override lists: the first value of every sweep, then each other value in turn."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        return [], f"cannot parse the overrides: {_one_line(str(e))}"
    base, alternatives = [], []
    for ov, text in zip(parsed, overrides):
        if ov.is_sweep_override():
            key = ov.get_key_element()
            values = list(ov.sweep_string_iterator())
            if not values:
                return [], f"the sweep '{text}' has no values"
            base.append(f"{key}={values[0]}")
            alternatives.append([(len(base) - 1, f"{key}={v}") for v in values[1:]])
        else:
            base.append(text)
    probes = [base]
    for pos, alt in itertools.chain.from_iterable(alternatives):
        p = list(base)
        p[pos] = alt
        probes.append(p)
    return probes, None


def _one_line(msg: str) -> str:
    msg = re.sub(r"\n\s*Config search path:.*", "", msg, flags=re.S)
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    if any(ln.startswith("Available options in") for ln in lines):
        head = [ln for ln in lines if not ln.startswith("Available options")]
        i = next(i for i, ln in enumerate(lines) if ln.startswith("Available options in"))
        group = lines[i].rstrip(":")
        options = [ln for ln in lines[i + 1:] if " " not in ln]
        m = re.search(r"Could not find '([^'/]+)/([^']+)'", msg)
        if m:
            return f"unknown {m.group(1)} '{m.group(2)}'; choose one of: {', '.join(options)}"
        return f"{head[0] if head else 'invalid choice'}; {group.lower()}: {', '.join(options)}"
    return " ".join(lines)


def check_overrides(config_name: str, overrides: list[str], multirun: bool, files: bool = True) -> Optional[str]:
    """Return an error message, or None when every job of the command composes and checks out
    (``files``: also the files a run needs, e.g. the LPIPS weights)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf.errors import OmegaConfBaseException

    from ..stages.checks import check_config

    probes, err = _expand(overrides)
    if err:
        return err
    if len(probes) > 1 and not multirun:
        return "a sweep (comma-separated values) needs multirun: add -m, e.g. ld3 train -m solver=euler,dpmpp"
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="preflight"):
            for probe in probes:
                try:
                    cfg = compose(config_name=config_name, overrides=probe)
                except Exception as e:  # Hydra and OmegaConf raise several exception types here
                    return _explain(e, probe)
                try:
                    msg = check_config(cfg, files)
                except OmegaConfBaseException as e:
                    return _explain(e, probe)
                if msg:
                    suffix = f" (job: {' '.join(probe)})" if len(probes) > 1 else ""
                    return msg + suffix
    finally:
        GlobalHydra.instance().clear()
    return None


def _explain(e: Exception, probe: list[str]) -> str:
    msg = _one_line(str(e))
    m = re.search(r"Key '([^']+)' is not in struct", msg) or re.search(r"Could not override '([^']+)'", msg)
    if m:
        key = m.group(1)
        top = key.split(".")[0]
        hint = (f"; '{top}' has no key '{key.split('.', 1)[1]}' -- see `ld3 <stage> --cfg job` for the valid keys"
                if "." in key
                else f"; valid top-level keys: see `ld3 <stage> --cfg job` (add new keys with +{key}=...)")
        return f"unknown config key '{key}'{hint}"
    return msg
