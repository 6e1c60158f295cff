"""Find the commands in README.md and docs/*.md, and classify them for the doc tests.

A command is a line of a fenced code block (or an inline code span) that starts with ``ld3 ``
(after an optional ``$ `` prompt and ``VAR=value`` assignments), a ``torchrun ... -m ld3_cli
<stage> ...`` line (checked as ``ld3 <stage> ...``), a ``make <target>`` line or a ``python
scripts/<file>.py`` line.  Continuation lines (trailing backslash) are joined and ``# comments``
dropped.  Diagrams and templates (``->``, ``<stage>``, ``...``) are not commands.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEMPLATE_MARKS = ("→", "<", "...", "…", "|")
FENCE = re.compile(r"^\s*(```|~~~)(\w*)")
INLINE = re.compile(r"`([^`\n]+)`")
ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
# stages whose real run only needs the embedded default (no weights, no data, no network)
CHEAP_STAGES = {"run", "teacher-sample", "train", "train-discretization", "eval", "evaluate-fid", "sample",
                "sample-student", "export", "schedules"}


@dataclass(frozen=True)
class Command:
    doc: str          # file name relative to the repo
    kind: str         # ld3 | make | script
    argv: tuple       # the words after ``ld3`` / ``make`` / ``python``
    env: tuple = ()   # VAR=value prefixes
    text: str = ""

    def __str__(self) -> str:
        return f"{self.doc}: {self.text}"


def _blocks(text: str):
    """(language, lines) of every fenced code block."""
    lang, lines, inside = "", [], False
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and not inside:
            inside, lang, lines = True, m.group(2).lower(), []
        elif m and inside:
            inside = False
            yield lang, lines
        elif inside:
            lines.append(line)


def _join(lines: list[str]) -> list[str]:
    out, buf = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


def _is_stage(word: str) -> bool:
    """A stage word or alias (program output such as ``ld3 (eval)`` in a table is not a command)."""
    from ld3_cli.cli.main import resolve_stage

    return resolve_stage(word) is not None


def parse(line: str, doc: str):
    """A :class:`Command` for one shell line, or None."""
    s = line.strip()
    if s.startswith("$ "):
        s = s[2:]
    if not s or any(mark in s for mark in TEMPLATE_MARKS):
        return None
    try:
        words = shlex.split(s, comments=True)
    except ValueError:
        return None
    env = []
    while words and ASSIGN.match(words[0]):
        env.append(words.pop(0))
    if not words:
        return None
    head = words[0]
    if head == "ld3" and len(words) > 1 and _is_stage(words[1]):
        return Command(doc, "ld3", tuple(words[1:]), tuple(env), s)
    if head == "torchrun" and "-m" in words:
        i = words.index("-m")
        if words[i + 1:i + 2] == ["ld3_cli"] and len(words) > i + 2 and _is_stage(words[i + 2]):
            return Command(doc, "ld3", tuple(words[i + 2:]), tuple(env), s)
    if head == "make" and len(words) > 1:
        return Command(doc, "make", tuple(words[1:]), tuple(env), s)
    if head in ("python", "python3", ".venv/bin/python") and len(words) > 1 and words[1].startswith("scripts/"):
        return Command(doc, "script", tuple(words[1:]), tuple(env), s)
    return None


def commands(paths=None) -> list[Command]:
    """Every command of the given markdown files (default: README.md and docs/*.md), in order, deduplicated."""
    out: list[Command] = []
    seen = set()
    for path in paths or DOC_FILES:
        text = Path(path).read_text()
        doc = Path(path).relative_to(REPO).as_posix()
        found = []
        for lang, lines in _blocks(text):
            if lang in ("", "bash", "sh", "shell", "console"):
                found += [parse(line, doc) for line in _join(lines)]
        prose = re.sub(r"^\s*(```|~~~).*?^\s*(```|~~~)", "", text, flags=re.S | re.M)
        found += [parse(span, doc) for span in INLINE.findall(prose) if span.startswith(("ld3 ", "make "))]
        for c in found:
            if c is not None and (c.kind, c.argv, c.env) not in seen:
                seen.add((c.kind, c.argv, c.env))
                out.append(c)
    return out


def split_ld3(argv: tuple) -> tuple[str, list[str], list[str], bool]:
    """(stage word, hydra flags, overrides, multirun) of an ``ld3`` command, sugar applied."""
    from ld3_cli.cli.main import desugar, split_overrides

    stage, rest = argv[0], list(argv[1:])
    hargs, err = desugar(rest)
    assert err is None, f"sugar flags: {err}"
    flags, overrides = split_overrides(hargs)
    return stage, flags, overrides, bool({"-m", "--multirun"} & set(flags))


def is_cheap(cmd: Command) -> bool:
    """Runs for real in a few seconds on the embedded default with the tiny budgets."""
    if cmd.kind != "ld3" or cmd.argv[0] not in CHEAP_STAGES or cmd.env:
        return False
    stage, flags, overrides, multirun = split_ld3(cmd.argv)
    if multirun or any(f in ("--help", "-h", "--cfg", "-c", "--info") for f in flags):
        return False
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in ("model", "dataset", "experiment") and value not in ("mnist_gmm", "mnist5k"):
            return False
        if key.startswith(("model.", "dataset.", "hydra", "device")) or "/" in key:
            return False
    return True


def make_dry_run(target: str, *variables: str) -> str:
    """The commands ``make -n <target>`` would run (the install step taken as done); fails on an unknown target."""
    import subprocess

    res = subprocess.run(["make", "--no-print-directory", "-n", "-o", "install", target, *variables], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, f"make {target}: {res.stderr.strip()}"
    return res.stdout
