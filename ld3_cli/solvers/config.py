"""A solver config (``solver`` or ``teacher.solver``) resolved once: the solver, its checked options, its steps.

:meth:`SolverSetup.from_config` is the one place a solver config is read.  ``options`` holds the options the
config sets that this solver takes (every value checked against the solver's declarations); a key that is
another solver's option is dropped (an experiment config sets, e.g., UniPC's ``variant`` for every solver of a
sweep), a key no solver declares is refused by name.  ``key_fields()`` is what the config contributes to store
keys (unchanged from the options the config sets, so adding a declaration does not move existing keys).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from ..store import without_neutral
from . import get_solver
from .base import ANALYTIC_FIRST, SolverSpec

# options declared after store keys were made: at these values (what every run did before) they stay out of keys
NEUTRAL_SOLVER_SETTINGS = {ANALYTIC_FIRST.name: (False,)}


def parse_nfe(nfe: Any, prefix: str = "") -> int:
    """``nfe`` as a whole number >= 1, or ConfigError naming ``<prefix>nfe``."""
    try:
        value = None if isinstance(nfe, bool) else int(nfe)
    except (TypeError, ValueError):
        value = None
    if value is None:
        raise ConfigError(f"{prefix}nfe must be a whole number >= 1, got {nfe!r}")
    if value < 1:
        raise ConfigError(f"{prefix}nfe must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class SolverSetup:
    """``name`` run with ``options`` (those the config sets, checked) for ``nfe`` evaluations = ``steps`` steps."""

    name: str
    nfe: int
    steps: int
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, solver_cfg: Mapping, nfe: Any, prefix: str = "solver") -> "SolverSetup":
        """Resolve ``solver_cfg`` (plain mapping with ``name``) for ``nfe`` (ConfigError naming ``prefix``)."""
        from . import SOLVERS  # read when called: a solver registered later counts

        given = {k: v for k, v in dict(solver_cfg).items() if k != "name"}
        spec = get_solver(str(solver_cfg.get("name")))
        anyone = set().union(*(s.declared for s in SOLVERS.values()))
        unknown = sorted(set(given) - anyone)
        if unknown:
            raise ConfigError(f"{prefix}.{unknown[0]} is not an option of any solver; solver '{spec.name}' takes "
                              f"{sorted(spec.declared)}")
        own = {k: v for k, v in given.items() if k in spec.declared}
        options = spec.resolve_options(own, prefix, values=True)
        head = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
        n = parse_nfe(nfe, head)
        steps = spec.steps_for(n, options)
        spec.validate(steps, options["order"], options)
        return cls(spec.name, n, steps, {k: options[k] for k in own})

    @property
    def spec(self) -> SolverSpec:
        return get_solver(self.name)

    @property
    def resolved(self) -> dict:
        """Every option of the solver: the config's, and the declared defaults for the rest."""
        return {**self.spec.defaults, **self.options}

    def key_fields(self) -> dict:
        """What this solver config contributes to store keys: its name and the options the config sets (less those
        at a neutral value, :data:`NEUTRAL_SOLVER_SETTINGS`)."""
        return {"name": self.name, **without_neutral(dict(self.options), NEUTRAL_SOLVER_SETTINGS)}
