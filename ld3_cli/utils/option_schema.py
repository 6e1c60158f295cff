"""Declared options: each one once, with its default, its rule, its one-line doc and whether it keys the store.

An :class:`Option` is the single declaration an option has.  Everything else is derived from it: the
YAML defaults (``scripts/gen_option_configs.py`` writes ``configs/train/default.yaml`` and
``configs/solver/*.yaml``), the config reference (generated from those files' comments), the store keys
(``keyed``) and validation (:func:`check_options`, run once where a config enters: the CLI's boundary
check, or a library entry point such as :func:`ld3_cli.ld3.trainer.learn_schedule`).

Rules say in words what a good value is, so a refusal is one line: ``train.lr must be > 0, got 'fast'``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ..errors import ConfigError

Choices = Union[Sequence, Callable[[], Sequence]]


@dataclass(frozen=True)
class Rule:
    """``holds(value)`` for a good value; ``what`` (text, or a function giving it) describes one."""

    holds: Callable[[Any], bool]
    what: Union[str, Callable[[], str]]

    def describe(self) -> str:
        return self.what() if callable(self.what) else self.what


def _listed(choices: Sequence) -> str:
    words = [("true" if c is True else "false" if c is False else str(c)) for c in choices]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _choices(choices: Choices) -> tuple:
    return tuple(choices() if callable(choices) else choices)


def _same(v, c) -> bool:
    """Equality that keeps True apart from 1 (a flag is not a number)."""
    return v == c and isinstance(v, bool) == isinstance(c, bool)


def one_of(choices: Choices) -> Rule:
    """Exactly one of ``choices`` (a sequence, or a function returning one: a registry read when checked)."""
    return Rule(lambda v: any(_same(v, c) for c in _choices(choices)), lambda: _listed(_choices(choices)))


def list_of(choices: Choices) -> Rule:
    """A non-empty list whose items are all among ``choices``."""
    def holds(v):
        ok = _choices(choices)
        return isinstance(v, (list, tuple)) and len(v) > 0 and all(x in ok for x in v)
    return Rule(holds, lambda: f"a non-empty list of {list(_choices(choices))}")


def whole(lo: Optional[int] = None) -> Rule:
    """A whole number (not a flag), at least ``lo``."""
    return Rule(lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo),
                "a whole number" + ("" if lo is None else f" >= {lo}"))


def number(ok: Callable[[float], bool], what: str, optional: bool = False) -> Rule:
    """A real number with ``ok(value)`` (``what`` says which); ``optional``: null allowed too."""
    def holds(v):
        if v is None:
            return optional
        return isinstance(v, (int, float)) and not isinstance(v, bool) and ok(float(v))
    return Rule(holds, what + (" or null" if optional else ""))


FLAG = one_of((True, False))
PATH_OR_NULL = Rule(lambda v: v is None or isinstance(v, str), "a path (or null)")


@dataclass(frozen=True)
class Option:
    """One option: ``name``, ``default``, ``rule``, a one-line ``doc``.

    ``keyed``: part of the store key of what it produces (False for runtime-only settings such as a
    validation batch size).  ``yaml``: how the generated YAML writes the default when it is an
    interpolation (``{default}`` stands for the default, e.g. ``${oc.select:model.param,{default}}``).
    ``as_tuple``: a list value is kept as a tuple (hashable, immutable).
    """

    name: str
    default: Any
    rule: Rule
    doc: str
    keyed: bool = True
    yaml: Optional[str] = None
    as_tuple: bool = False

    def check(self, value: Any, prefix: str) -> Any:
        """``value`` as stored (lists as tuples when ``as_tuple``), or ConfigError naming ``prefix.name``."""
        if not self.rule.holds(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{prefix}.{self.name} must be {self.rule.describe()}, got {shown!r}")
        return tuple(value) if self.as_tuple and isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class OptionGroup:
    """Options that belong together (one concern); ``doc`` heads them in the generated YAML."""

    name: str
    doc: str
    options: tuple[Option, ...]


def by_name(options: Iterable[Option]) -> dict[str, Option]:
    return {o.name: o for o in options}


def check_options(declared: Mapping[str, Option], given: Mapping[str, Any], prefix: str,
                  fill_defaults: bool = True, values: bool = True, owner: str = "") -> dict[str, Any]:
    """Every option of ``given`` checked against its declaration (one ConfigError line per problem).

    An option ``declared`` lacks is refused by name (``owner`` says whose options these are), listing the valid
    ones.  ``fill_defaults``: the result has every declared option (the defaults for those not given); else only
    those given.  ``values=False`` checks the names only (for callers whose values were checked where they
    entered, e.g. a solver inside the training loop).
    """
    unknown = sorted(set(given) - set(declared))
    if unknown:
        whose = f" of {owner}" if owner else ""
        raise ConfigError(f"unknown {prefix} option(s) {unknown}{whose}; valid: {sorted(declared)}")
    out = {}
    for name, opt in declared.items():
        if name in given:
            out[name] = opt.check(given[name], prefix) if values else given[name]
        elif fill_defaults:
            out[name] = opt.default
    return out
