"""What a CLI process imports: the heavy metric libraries only where a metric needs them.

torchvision (with torch._dynamo and sympy behind it), pytorch-fid and lpips cost ~1.5 s CPU to import;
every ``ld3`` process used to pay that through ``metrics.inception``, error paths and the demo included.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ld3_cli"
HEAVY = ("torchvision", "pytorch_fid", "lpips")


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported by statements outside function bodies (module, class, if/try blocks)."""
    out: set[str] = set()
    todo = list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
        todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return out


def test_no_module_imports_the_heavy_metric_libraries_at_import_time():
    offenders = {str(p.relative_to(PACKAGE)): sorted(_module_level_imports(p) & set(HEAVY))
                 for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_a_stage_process_loads_none_of_them():
    code = ("import sys, ld3_cli.cli.main, ld3_cli.cli.preflight, ld3_cli.stages.runner, ld3_cli.stages.run, "
            "ld3_cli.stages.evaluate, ld3_cli.stages.sample, ld3_cli.stages.train, ld3_cli.stages.teacher_sample, "
            "ld3_cli.models.mnist_gmm; print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
