"""Write the trainer's defaults into configs/train/default.yaml: TrainOptions is their one home.

    python scripts/gen_train_defaults.py            # rewrite the values in configs/train/default.yaml
    python scripts/gen_train_defaults.py --check    # exit 1 if the file's values differ from TrainOptions

The YAML keeps what only the config knows -- its comments (the options' documentation) and the
settings other config groups may supply (``${oc.select:model.param,lambda}``: the model config's
``param``, else the default) -- and every default value comes from
:class:`ld3_cli.ld3.options.TrainOptions`: a plain ``key: value`` line gets the field's default, an
``oc.select`` gets it as its fallback, and a plain interpolation (``seed: ${seed}``) is left to
the config.  The file must list exactly the fields of TrainOptions, in any order.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional

from ld3_cli.ld3.options import TrainOptions

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "configs" / "train" / "default.yaml"
KEY_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<sep>\s*)(?P<value>.*?)(?P<comment>\s+#.*)?$")
SELECT = re.compile(r"^\$\{oc\.select:(?P<path>[^,}]+),(?P<fallback>[^}]*)\}$")


def yaml_literal(value: Any) -> str:
    """``value`` as YAML that reads back as the same value (floats positional, never ``5e-05``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")  # the shortest repr's digits, positional
        return text if "." in text else text + ".0"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_literal(v) for v in value) + "]"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-/]*", text) and text not in ("null", "true", "false", "yes", "no")
    return text if plain else repr(text)


def render(text: str) -> str:
    """``text`` (the train YAML) with every default taken from TrainOptions; ValueError if the keys differ."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    seen, out = [], []
    for line in text.splitlines():
        m = KEY_LINE.match(line)
        if not m:
            out.append(line)
            continue
        key, value = m["key"], m["value"]
        if key not in defaults:
            raise ValueError(f"{TRAIN_YAML.name}: '{key}' is not a TrainOptions field")
        seen.append(key)
        select = SELECT.match(value)
        if select:
            value = f"${{oc.select:{select['path']},{yaml_literal(defaults[key])}}}"
        elif not value.startswith("${"):
            value = yaml_literal(defaults[key])
        out.append(f"{key}:{m['sep']}{value}{m['comment'] or ''}")
    missing = [k for k in defaults if k not in seen]
    if missing:
        raise ValueError(f"{TRAIN_YAML.name} lacks the TrainOptions field(s) {missing}; add them with a comment")
    return "\n".join(out) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file's values differ from TrainOptions")
    ap.add_argument("--file", type=Path, default=TRAIN_YAML)
    args = ap.parse_args(argv)
    current = args.file.read_text()
    try:
        text = render(current)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.check:
        if current != text:
            print(f"{args.file} differs from TrainOptions' defaults; run: python scripts/gen_train_defaults.py",
                  file=sys.stderr)
            return 1
        print(f"{args.file} matches TrainOptions")
        return 0
    args.file.write_text(text)
    print(f"wrote {args.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
