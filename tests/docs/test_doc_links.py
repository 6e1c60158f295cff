"""Every path and module a document names exists: README.md and docs/*.md link nothing stale.

Checked: markdown links ``[text](target)`` (other than web addresses and anchors) and every
path to a ``*.md`` named, which must be documents inside the repository; repository paths written out
(``ld3_cli/...``, ``tests/...``, ``scripts/...``, ``docs/...``, ``configs/...``); and dotted names
under ``ld3_cli`` (a module, or an attribute of one).  Templates (``<name>``, ``*``, ``{...}``)
and the files a tutorial has the reader write (``# file: <path>`` lines) are skipped.
"""
from __future__ import annotations

import importlib
import re

import pytest
from docs_testlib import DOC_FILES, REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:ld3_cli|tests|scripts|docs|configs)/[\w./-]*)")
MODULE = re.compile(r"(?<![\w/.])(ld3_cli(?:\.\w+)+)")
MARKDOWN = re.compile(r"(?<![\w./-])([\w./-]*/[\w.-]*\w\.md)\b")  # a path to a document (with a folder)
TEMPLATE = re.compile(r"[<>*{}]")


def _docs():
    return [pytest.param(p, id=p.relative_to(REPO).as_posix()) for p in DOC_FILES]


def _text(doc) -> str:
    """The document without the lines that name a file the reader writes (``# file: my_solvers.py``)."""
    return "\n".join(ln for ln in doc.read_text().splitlines() if not ln.lstrip().startswith("# file:"))


def _mentions(pattern: re.Pattern, text: str) -> set[str]:
    out = set()
    for m in pattern.finditer(text):
        end = text[m.end():m.end() + 1]
        if end in "<*{" and end:  # part of a template such as ld3_cli/stages/<name>.py
            continue
        out.add(m.group(1).rstrip(".,:;)"))
    return {s for s in out if not TEMPLATE.search(s)}


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("doc", _docs())
def test_markdown_links_point_at_files_in_the_repository(doc):
    bad = []
    for target in LINK.findall(doc.read_text()):
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z]+:", path):
            continue
        resolved = (doc.parent / path).resolve()
        if path.startswith("/") or REPO not in resolved.parents or not resolved.exists():
            bad.append(target)
    assert not bad, f"{doc.name} links what the repository does not hold: {bad}"


@pytest.mark.parametrize("doc", _docs())
def test_documents_named_in_docs_are_in_the_repository(doc):
    bad = []
    for name in _mentions(MARKDOWN, _text(doc)):
        here = [(base / name).resolve() for base in (doc.parent, REPO)]
        if name.startswith("/") or not any(REPO in p.parents and p.is_file() for p in here):
            bad.append(name)
    assert not bad, f"{doc.name} names documents outside the repository (or none): {sorted(bad)}"


@pytest.mark.parametrize("doc", _docs())
def test_repository_paths_named_in_docs_exist(doc):
    missing = sorted(p for p in _mentions(REPO_PATH, _text(doc)) if not (REPO / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", _docs())
def test_modules_named_in_docs_exist(doc):
    missing = sorted(m for m in _mentions(MODULE, _text(doc)) if not _resolves(m))
    assert not missing, f"{doc.name} names modules or attributes that do not exist: {missing}"


def test_repository_paths_named_in_code_exist():
    """Docstrings and messages of the package and the scripts name no moved or missing file either."""
    sources = sorted([*REPO.glob("ld3_cli/**/*.py"), *REPO.glob("scripts/*.py")])
    missing = sorted(f"{src.relative_to(REPO)}: {p}" for src in sources
                     for p in _mentions(REPO_PATH, src.read_text()) if not (REPO / p).exists())
    assert not missing, f"source files name paths that do not exist: {missing}"
