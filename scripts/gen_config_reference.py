"""Generate docs/config-reference.md from the config tree (configs/), comments included.

    python scripts/gen_config_reference.py            # rewrite docs/config-reference.md
    python scripts/gen_config_reference.py --check    # exit 1 if the committed file is out of date

Every YAML file under configs/ is read twice: with PyYAML for the values, and line by line for
the comments.  A comment block directly above a key (or a trailing ``# ...`` on its line) is that
key's description; the comment lines at the top of a file, before its first key, describe the
file.  Nested mappings become dotted keys (``teacher.solver.name``).  The ``hydra:`` and
``defaults:`` sections are Hydra plumbing and are summarised, not listed.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ld3_cli.ld3.options import TRAIN_GROUPS
from ld3_cli.stages.table import STAGES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
OUT = REPO / "docs" / "config-reference.md"
GROUPS = ("dataset", "model", "solver", "teacher", "train", "sample", "eval")
STAGE_FILES = tuple(stage.config for stage in STAGES.values())
SKIP_SECTIONS = {"hydra", "defaults"}


def _train_hints() -> dict:
    """``model.<hint>`` -> "Hint for train.<option>." for every training option a model config may set (the options
    whose default reads ``${oc.select:model.<hint>,...}``, ld3_cli/ld3/options.py)."""
    hints = {}
    for group in TRAIN_GROUPS:
        for option in group.options:
            m = re.match(r"\$\{oc\.select:model\.(\w+),", option.yaml or "")
            if m:
                hints[f"model.{m.group(1)}"] = f"Hint for train.{option.name}."
    return hints


# Descriptions for keys the config files leave uncommented (a comment in the file always wins).
GLOSSARY = {**_train_hints(),
    "dataset.name": "Dataset name, used in result tables and default file names.",
    "dataset.kind": "How the data is used: mnist5k (embedded digits), reference (only FID statistics are needed), "
                    "image_folder (your images).",
    "dataset.eval_n": "Samples per schedule for evaluation (the default of sample.n and eval.exact_n).",
    "dataset.exact_n": "Exact model samples behind fd_exact, for models that draw them (the default of eval.exact_n; "
                       "without it, dataset.eval_n).",
    "dataset.fid_ref": "FID reference statistics (npz with mu, sigma); LD3_REFS=<folder> moves the default folder.",
    "dataset.fid_ref_url": "Where the reference statistics can be downloaded (null: make them with `ld3 fid-ref`).",
    "dataset.path": "The folder of images (required).",
    "model._target_": "The class or function Hydra instantiates with the other keys (ld3's hint keys excluded).",
    "model.name": "Short name, shown in tables; prefix of the model's store key.",
    "model.kind": "Builder: mnist_gmm, mnist_ddpm, edm, diffusers or flow (or set _target_ for your own class).",
    "model.path": "Weights file or directory; LD3_WEIGHTS=<folder> moves the default folder.",
    "model.file_name": "The expected file or directory name (named in the missing-file error).",
    "model.url": "Where the weights come from.",
    "model.download": "true = fetch a missing file from model.url.",
    "model.param": "Hint for train.param: lambda (log-SNR) or time (native t).",
    "model.teacher_discretization": "Hint for teacher.discretization.",
    "model.teacher_nfe": "Hint for teacher.nfe.",
    "model.dtype": "dtype the network runs in (float32, float16, bfloat16).",
    "model.guidance_scale": "Classifier-free guidance scale (1 = no guidance).",
    "model.decode_batch_size": "Batch size of the VAE / VQ decoder.",
    "model.prompts_file": "Prompts: an MS-COCO captions JSON or a .txt file (one prompt per line).",
    "model.prompts_url": "Where the captions come from.",
    "model.prompt_selection": "cycle (seed s uses prompt s mod P) or random (a seeded draw).",
    "model.negative_prompt": "Negative prompt (the unconditional branch of guidance).",
    "model.random_init": "Random weights (no file): for benchmarks and smoke tests only.",
    "model.seed": "Seed of the random initialisation.",
    "model.precond": "EDM preconditioning class.",
    "model.shape": "Shape (C, H, W) of the state the solver integrates.",
    "model.prediction": "What the network predicts: eps, x0, v or velocity.",
    "model.time_input": "How the native time is fed to the network.",
    "model.sigma_min": "Smallest noise level of the sampling range.",
    "model.sigma_max": "Largest noise level of the sampling range.",
    "solver.name": "Solver: euler, heun, dpmpp, unipc, ipndm, deis, or a stock sampler k_euler, k_dpmpp_2m, "
                   "k_heun (docs/solvers.md).",
    "teacher.n": "Teacher pairs (noise, teacher image); split into training and validation by train.val_fraction.",
    "teacher.solver.name": "Teacher solver.",
    "teacher.solver.order": "Teacher solver order.",
    "teacher.solver.variant": "UniPC variant of the teacher.",
    "teacher.solver.lower_order_final": "Lower the order of the teacher's final steps (auto: when steps < 10).",
    "teacher.nfe": "Teacher NFE (the model's hint teacher_nfe, else 20).",
    "teacher.discretization": "Teacher time steps (the model's hint teacher_discretization, else logsnr).",
    "model.use_fp16": "null keeps the checkpoint's flag; true runs the network in float16 (CUDA only).",
    "model.max_sequence_length": "Longest T5 prompt, in tokens.",
    "model.init_kwargs.*": "Network constructor argument (as in EDM's training script for this architecture).",
    "model.network.*": "Argument of the network (model.network._target_ builds it).",
    "model.scheduler.*": "Noise-schedule setting (a diffusers scheduler-config key; overrides the directory's "
                         "scheduler/).",
    "eval.compare": "Schedules to score: ld3 (the learned one) and baseline names (`ld3 schedules` lists them).",
    "eval.fid_batch_size": "Images per Inception batch (does not change the result).",
    "sample.n": "Images per schedule (default dataset.eval_n).",
    "sample.seed_offset": "Image i uses seed seed_offset + i (far from the training seeds 0..teacher.n-1).",
    "sample.batch_size": "Images per network batch (does not change the result).",
    "sample.shard_size": "Images per npz shard.",
}
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*|\"[^\"]+\"|'[^']+'):(?P<rest>.*)$")


@dataclass
class Entry:
    """One leaf (or explicitly documented parent) setting of a config file."""

    key: str
    value: Any
    doc: str = ""


@dataclass
class ConfigFile:
    """One YAML file: its header comment, its settings, and its ``defaults:`` list (Hydra's group choices)."""

    header: str
    entries: list[Entry] = field(default_factory=list)
    defaults: list = field(default_factory=list)


# -- reading --------------------------------------------------------------------------------------
def _strip_comment(text: str) -> tuple[str, str]:
    """Split ``value  # comment`` outside quotes; return (value, comment)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def _comments_by_key(lines: list[str]) -> tuple[str, dict[str, str]]:
    """(file header, {dotted key: comment text}) from the raw lines of one YAML file."""
    header: list[str] = []
    seen_key = False
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    docs: dict[str, str] = {}
    block_indent: Optional[int] = None  # inside a block scalar (| or >): skip deeper lines
    for raw in lines:
        line = raw.rstrip("\n")
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped:
            if not seen_key and header:
                header.append("")
            pending = []
            continue
        if stripped.startswith("#"):
            text = stripped[1:].strip()
            if not seen_key:
                header.append(text)
            pending.append(text)
            continue
        m = _KEY.match(line)
        if not m:  # list items and other continuation lines
            pending = []
            continue
        if not seen_key and pending and "" in header[:len(header) - len(pending)]:
            header = header[:len(header) - len(pending)]  # a block of its own after the header documents the key
        elif not seen_key:
            pending = []  # the header runs into the first key: it describes the file
        seen_key = True
        key = m.group("key").strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        value, trailing = _strip_comment(m.group("rest"))
        doc = " ".join(p for p in pending if p)
        if trailing:
            doc = f"{doc} {trailing}".strip()
        if doc:
            docs[dotted] = doc
        pending = []
        if value.strip() in ("|", "|-", "|+", ">", ">-", ">+"):
            block_indent = indent
        elif value.strip() == "":
            stack.append((indent, key))
    while header and header[-1] == "":
        header.pop()
    return "\n".join(header), docs


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict) and d:
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.extend(_flatten(v, key))
            else:
                out.append((key, v))
    return out


def read_config(path: Path) -> ConfigFile:
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    header, docs = _comments_by_key(text.splitlines())
    cf = ConfigFile(header=header, defaults=list(data.get("defaults", []) or []))
    parents_done = set()
    for key, value in _flatten({k: v for k, v in data.items() if k not in SKIP_SECTIONS}):
        # a documented parent mapping (e.g. ``teacher.solver``) gets its own row before its children
        parts = key.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in docs and parent not in parents_done:
                parents_done.add(parent)
                cf.entries.append(Entry(parent, None, docs[parent]))
        cf.entries.append(Entry(key, value, docs.get(key, "")))
    return cf


def _fill_from_glossary(cf: ConfigFile, group: str) -> None:
    for e in cf.entries:
        if not e.doc:
            full = f"{group}.{e.key}"
            e.doc = GLOSSARY.get(full) or GLOSSARY.get(full.rsplit(".", 1)[0] + ".*", "")


# -- writing --------------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_fmt(v).strip("`") for v in value)
        return f"`[{inner}]`"
    if isinstance(value, dict):
        return "`{}`"
    s = str(value)
    if s == "":
        return '`""`'
    return f"`{s}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(entries: list[Entry], prefix: str = "") -> list[str]:
    rows = ["| key | default | description |", "|---|---|---|"]
    for e in entries:
        parent = e.value is None and any(x.key.startswith(e.key + ".") for x in entries)
        value = "(section)" if parent else _fmt(e.value)
        rows.append(f"| `{prefix}{e.key}` | {value} | {_cell(e.doc)} |")
    return rows


def _group_default(base: ConfigFile, group: str) -> Optional[str]:
    for item in base.defaults:
        if isinstance(item, dict) and group in item:
            return str(item[group])
    return None


def _intro_lines() -> list[str]:
    """Title, generated-file notice, how configs compose, and the table of contents."""
    return [
        "# Configuration reference",
        "",
        "<!-- GENERATED by scripts/gen_config_reference.py from configs/ -- do not edit by hand;",
        "     rerun `python scripts/gen_config_reference.py` after changing a config file. -->",
        "",
        "Every stage composes `configs/<stage>.yaml`, which includes `configs/base.yaml`, which picks one",
        "file from each config group. Change a setting with a Hydra override (`key=value`), pick another",
        "group member with `group=name` (`model=edm_cifar10`), add a key that a file lacks with",
        "`+key=value`, and print the composed result with `ld3 <stage> --cfg job`. Values such as",
        "`${oc.env:LD3_WEIGHTS,weights}` are interpolations, resolved when the stage runs",
        "(`${oc.select:model.teacher_nfe,20}` takes the model's hint, else 20).",
        "",
        "Contents: [top-level settings](#top-level-settings-baseyaml) - [stages](#stage-configs) - "
        + " - ".join(f"[{g}](#group-{g})" for g in GROUPS),
        "",
    ]


def _base_section(base: ConfigFile, chosen: dict[str, Optional[str]]) -> list[str]:
    """``base.yaml``'s own keys and the group members it picks by default."""
    lines = ["## Top-level settings (`base.yaml`)", ""]
    if base.header:
        lines += [_cell(base.header), ""]
    lines += _table(base.entries)
    lines += ["", "Groups chosen by default: " + ", ".join(f"`{g}={c}`" for g, c in chosen.items() if c) + ".", ""]
    return lines


def _stages_section(config_dir: Path) -> list[str]:
    """One subsection per stage file in ``STAGE_FILES`` that exists."""
    lines = ["## Stage configs", "",
             "One file per stage (`ld3 <stage>` composes it). Options that belong to a single stage live",
             "under a key named after it.", ""]
    for name in STAGE_FILES:
        p = config_dir / f"{name}.yaml"
        if not p.is_file():
            continue
        cf = read_config(p)
        own = [e for e in cf.entries if e.key != "stage"]
        stage = next((e.value for e in cf.entries if e.key == "stage"), name)
        about = _cell(cf.header.split(": ", 1)[-1]) if cf.header else ""
        lines += [f"### `ld3 {stage}` (`{name}.yaml`)", "", about, ""]
        if own:
            lines += _table(own) + [""]
    return lines


def _group_section(config_dir: Path, group: str, default: Optional[str]) -> list[str]:
    """The members of config group ``group`` (empty if its folder is missing), ``default`` marked."""
    gdir = config_dir / group
    if not gdir.is_dir():
        return []
    files = sorted(gdir.glob("*.yaml"))
    lines = [f"## Group `{group}`", "",
             f"Choose with `{group}=<name>`; default `{default}`. Members: "
             + ", ".join(f"`{f.stem}`" for f in files) + ".", ""]
    for f in files:
        cf = read_config(f)
        _fill_from_glossary(cf, group)
        title = f"### `{group}={f.stem}`" + (" (default)" if f.stem == default else "")
        lines += [title, ""]
        glob_pkg = cf.header.startswith("@package _global_")  # a preset whose keys are top-level paths
        header = cf.header.replace("@package _global_", "", 1).strip() if glob_pkg else cf.header
        if header:
            lines += [_cell(header), ""]
        lines += _table(cf.entries, prefix="" if glob_pkg else f"{group}.") + [""]
    return lines


def _experiments_section(config_dir: Path) -> list[str]:
    """A list of the ``experiment/`` presets with their header lines (empty if there are none)."""
    experiments = sorted((config_dir / "experiment").glob("*.yaml"))
    if not experiments:
        return []
    lines = ["## Experiments (`experiment=<name>`)", "",
             "Paper settings as configuration (Hydra's experiment pattern): `ld3 train experiment=<name>` sets "
             "the model, dataset, solver, teacher, training and sampling values of a setup; each value's comment "
             "in the file names its source in the official code.", ""]
    for f in experiments:
        header = read_config(f).header.replace("@package _global_", "").strip(" .")
        lines += [f"- `{f.stem}`: {_cell(header)}"]
    lines.append("")
    return lines


def _plumbing_section(config_dir: Path) -> list[str]:
    """The remaining YAML files (Hydra settings) outside the groups and ``experiment/`` (empty if none)."""
    other = sorted(p.relative_to(config_dir).as_posix() for p in config_dir.rglob("*.yaml")
                   if p.parent.name not in GROUPS and p.parent != config_dir and p.parent.name != "experiment")
    if not other:
        return []
    return ["## Hydra plumbing", "", "Also in the tree (Hydra settings, not ld3 options): "
            + ", ".join(f"`{o}`" for o in other) + ".", ""]


def render(config_dir: Path = CONFIGS) -> str:
    """The whole markdown page for the config tree at ``config_dir``."""
    base = read_config(config_dir / "base.yaml")
    chosen = {g: _group_default(base, g) for g in GROUPS}
    lines = _intro_lines() + _base_section(base, chosen) + _stages_section(config_dir)
    for group in GROUPS:
        lines += _group_section(config_dir, group, chosen[group])
    lines += _experiments_section(config_dir) + _plumbing_section(config_dir)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the output file is out of date")
    ap.add_argument("--configs", type=Path, default=CONFIGS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    text = render(args.configs)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is out of date; run: python scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    from ld3_cli.store import atomic_write_text  # imports torch: only when writing

    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
