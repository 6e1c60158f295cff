"""Searched baseline schedules: GITS (:mod:`.gits`) and DMN (:mod:`.dmn`).

Unlike the closed-form discretizations of :mod:`ld3_cli.schedules`, these search for their
time steps: GITS runs a teacher solver on the model, DMN minimises an error bound of multistep
solvers.  They sit above :mod:`ld3_cli.solvers` (so :mod:`ld3_cli.schedules` imports no solver)
and register themselves with :func:`ld3_cli.schedules.discretize` when this package is imported;
each module loads on first use.  ``discretize("gits", n_steps, schedule, denoiser=..., seed=...)``
and ``discretize("dmn", n_steps, schedule)`` then work as for any other kind.
"""
from ..schedules.discretize import register_lazy

# kind -> the module that implements (and registers) it.  Searches are slow: the stages cache their results.
SEARCHED = {"gits": "ld3_cli.search.gits", "dmn": "ld3_cli.search.dmn"}
# searches that evaluate the model (they take ``denoiser=`` and ``seed=``)
NEEDS_MODEL = frozenset({"gits"})

for _kind, _module in SEARCHED.items():
    register_lazy(_kind, _module)

__all__ = ["NEEDS_MODEL", "SEARCHED"]
