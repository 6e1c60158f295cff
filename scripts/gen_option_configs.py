"""Write the option configs from their declarations: configs/train/default.yaml and configs/solver/<name>.yaml.

    python scripts/gen_option_configs.py            # rewrite the files
    python scripts/gen_option_configs.py --check    # exit 1 if a file differs from what the declarations give

The declarations (:data:`ld3_cli.ld3.options.TRAIN_GROUPS`, each solver's ``declared`` options) hold every
option's default, rule and one-line doc; these files are generated from them, and
``scripts/gen_config_reference.py`` turns the files' comments into docs/config-reference.md.  A default that
another config group may supply is written as the declaration's ``yaml`` template
(``${oc.select:model.param,lambda}``: the model config's hint, else the default).
"""
from __future__ import annotations

import argparse
import re
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Optional

from ld3_cli.ld3.options import TRAIN_GROUPS
from ld3_cli.solvers import SOLVERS
from ld3_cli.solvers.base import SolverSpec
from ld3_cli.utils.option_schema import Option

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
WIDTH = 118
TRAIN_HEADER = ("LD3 training (Tong et al., ICLR 2025): the `train` group. Defaults follow the paper unless noted; "
                "why each is what it is: docs/reproduction.md. Generated from ld3_cli/ld3/options.py by "
                "scripts/gen_option_configs.py -- edit the declarations, not this file.")


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


def _comment(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)


def _option_lines(options: Iterable[Option]) -> list[str]:
    out = []
    for o in options:
        value = yaml_literal(o.default)
        out += _comment(o.doc) + [f"{o.name}: {o.yaml.replace('{default}', value) if o.yaml else value}"]
    return out


def train_yaml() -> str:
    lines = _comment(TRAIN_HEADER)
    for group in TRAIN_GROUPS:
        lines += ["", f"# == {group.doc} ==", ""] + _option_lines(group.options)
    return "\n".join(lines) + "\n"


def solver_yaml(spec: SolverSpec) -> str:
    header = _comment(f"{spec.description}. Generated from ld3_cli/solvers/{type(spec).__module__.split('.')[-1]}"
                      ".py by scripts/gen_option_configs.py.")
    return "\n".join(header + [f"name: {spec.name}"] + _option_lines(spec.declared.values())) + "\n"


def generated() -> dict[Path, str]:
    """Every generated file and its text."""
    out = {CONFIGS / "train" / "default.yaml": train_yaml()}
    out.update({CONFIGS / "solver" / f"{name}.yaml": solver_yaml(spec) for name, spec in SOLVERS.items()})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a file differs from the declarations")
    args = ap.parse_args(argv)
    stale = [p for p, text in generated().items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(REPO)} differs from the declarations; run: python scripts/gen_option_configs.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.write_text(generated()[p])
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
