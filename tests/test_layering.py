"""The package layering: every import points down a layer, and the stage modules import none of each other.

Layers, top first (a package may import its own modules and those of lower layers; packages of one
layer import none of each other): cli; stages; ld3; export and search; metrics; solvers and models;
schedules; data; store; utils; errors.  Imports are read from the source (``import`` statements
anywhere in a module, including the ones inside functions).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ld3_cli"
LAYERS = [("cli",), ("stages",), ("ld3",), ("export", "search"), ("metrics",), ("solvers", "models"), ("schedules",),
          ("data",), ("store",), ("utils",), ("errors",)]
RANK = {pkg: len(LAYERS) - i for i, layer in enumerate(LAYERS) for pkg in layer}
STAGE_MODULES = {"teacher_sample", "train", "sample", "evaluate", "run", "export", "schedules", "fid_ref"}


def _imports(path: Path) -> set[str]:
    """Absolute names of the ``ld3_cli`` modules (or names in them) that ``path`` imports."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # a module's package (an __init__'s own)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out |= {module} if node.module else {f"{module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("ld3_cli.")}


def _package_of(module: str) -> str:
    return module.split(".")[1]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_point_down_the_layers(path):
    own = path.relative_to(PACKAGE).parts[0]
    upward = sorted(m for m in _imports(path) if _package_of(m) != own and _package_of(m) in RANK
                    and RANK[_package_of(m)] >= RANK[own])
    assert not upward, f"{own} (layer {RANK[own]}) imports {upward}"


def test_no_stage_module_imports_another():
    for name in sorted(STAGE_MODULES):
        imported = {m.split(".")[2] for m in _imports(PACKAGE / "stages" / f"{name}.py")
                    if m.startswith("ld3_cli.stages.") and len(m.split(".")) > 2}
        assert not imported & (STAGE_MODULES - {name}), f"stages/{name}.py imports {imported & STAGE_MODULES}"


def test_every_package_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= set(RANK), packages - set(RANK)
