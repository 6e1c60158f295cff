"""``ld3 <stage> [hydra overrides] [flags]``: the command-line dispatcher.

Each stage is its own Hydra application over the one ``configs/`` tree (so every stage has
overrides, ``--cfg job``, ``--help`` and multirun ``-m``).  This front end only

1. picks the stage (with aliases) and removes the stage word from ``argv``;
2. turns sugar flags (``--nfe 5``) into overrides (``nfe=5``), and the old ``+experiment=X`` into
   ``experiment=X``;
3. checks the overrides before Hydra starts (unknown groups, options or keys, impossible
   values for every job of a sweep), printing one clear error and exiting with status 2;
4. hands over to the stage's ``@hydra.main`` function.
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import Iterator, Optional

from ..errors import EXIT_USER_ERROR
from ..stages.table import ALIASES, STAGES

SUGAR = {"--nfe": "nfe", "--solver": "solver", "--model": "model", "--dataset": "dataset", "--schedule": "schedule",
         "--seed": "seed", "--device": "device", "--cache-dir": "cache_dir", "--order": "solver.order"}
# Hydra's own flags: name -> takes a value
HYDRA_FLAGS = {"-m": False, "--multirun": False, "--cfg": True, "-c": True, "--package": True, "-p": True,
               "--resolve": False, "--info": False, "-i": False, "--help": False, "-h": False, "--hydra-help": False,
               "--run": False, "-r": False, "--config-path": True, "-cp": True, "--config-name": True, "-cn": True,
               "--config-dir": True, "-cd": True, "--shell-completion": False, "-sc": True, "--version": False,
               "--experimental-rerun": True}
NO_PREFLIGHT = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version"}


def usage() -> str:
    from .. import __version__

    lines = [f"ld3 {__version__}: learn the time steps of diffusion-ODE samplers (LD3, Tong et al., ICLR 2025)", "",
             "usage: ld3 <stage> [overrides key=value ...] [--nfe N --solver S --model M --dataset D] [-m] [--cfg job]",
             "", "stages:"]
    for name, stage in STAGES.items():
        alias = [a for a in stage.aliases if "-" in a]
        extra = f"  (alias: {', '.join(alias)})" if alias else ""
        lines.append(f"  {name:<15} {stage.summary}{extra}")
    lines += ["", "examples:", "  ld3 run                              the whole pipeline on the embedded default",
              "  ld3 train solver=unipc nfe=5", "  ld3 eval --nfe 5",
              "  ld3 train -m solver=dpmpp,unipc,ipndm nfe=4,5,6   (a sweep)",
              "  ld3 <stage> --help                   the stage's config groups and options", "",
              "docs: README.md and docs/ in the source tree"]
    return "\n".join(lines)


def fail(msg: str, stage: Optional[str] = None) -> int:
    prefix = f"ld3 {stage}" if stage else "ld3"
    print(f"{prefix}: error: {msg}", file=sys.stderr)
    return EXIT_USER_ERROR


def resolve_stage(word: str) -> Optional[str]:
    word = ALIASES.get(word, word)
    return word if word in STAGES else None


def _word_groups(args: list[str], sugar: bool) -> Iterator[list[str]]:
    """``args`` in groups: a flag that takes a value (a Hydra flag such as ``--cfg``, or with ``sugar`` a
    sugar flag) together with the next word unless given as ``flag=value``; any other word alone."""
    i = 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        takes = args[i].startswith("-") and not eq and (HYDRA_FLAGS.get(name, False) or (sugar and name in SUGAR))
        n = 2 if takes and i + 1 < len(args) else 1
        yield args[i:i + n]
        i += n


def desugar(args: list[str]) -> tuple[list[str], Optional[str]]:
    """Translate sugar flags; return (hydra argv, error message or None)."""
    out: list[str] = []
    for group in _word_groups(args, sugar=True):
        a = group[0]
        name, eq, val = a.partition("=")
        if name in SUGAR:
            if not eq and len(group) < 2:
                return out, f"{name} needs a value (e.g. {name} 5)"
            out.append(f"{SUGAR[name]}={val if eq else group[1]}")
        elif a.startswith("-") and not a.lstrip("-")[:1].isdigit() and name not in HYDRA_FLAGS:
            choices = sorted(set(SUGAR) | {f for f in HYDRA_FLAGS if f.startswith("--")})
            near = difflib.get_close_matches(name, choices, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            return out, f"unknown option {name}{hint}; valid options: {', '.join(choices)}"
        elif a.startswith("+experiment="):  # the old spelling: `experiment` is in base.yaml's defaults now
            out.append(a[1:])
        else:
            out += group
    return out, None


def split_overrides(hargs: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags (and their values) from overrides."""
    flags, overrides = [], []
    for group in _word_groups(hargs, sugar=False):
        is_flag = group[0].startswith("-") and group[0].partition("=")[0] in HYDRA_FLAGS
        (flags if is_flag else overrides).extend(group)
    return flags, overrides


def main(argv: Optional[list[str]] = None) -> int:
    # OpenMP threads that sleep instead of spinning when they wait: on a shared or busy machine spinning
    # threads starve each other (measured: `ld3 train` 190 s -> 33 s on a loaded 2-core box; docs/benchmarks.md)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # NumPy's OpenBLAS threads always spin while they wait (no passive mode): under load its eigh for the Frechet
    # distances ran 5-13x slower on 2 threads than on one (docs/benchmarks.md); read when numpy is first imported
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "-V"):
        from .. import __version__

        print(f"ld3 {__version__}")
        return 0
    stage = resolve_stage(argv[0])
    if stage is None:
        dashed = [a for a in ALIASES if "-" in a]
        near = difflib.get_close_matches(argv[0], sorted(set(STAGES) | set(dashed)), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return fail(f"unknown stage '{argv[0]}'{hint}; valid stages: {', '.join(STAGES)} "
                    f"(aliases: {', '.join(dashed)})")
    hargs, err = desugar(argv[1:])
    if err:
        return fail(err, stage)
    flags, overrides = split_overrides(hargs)
    names = set(f.partition("=")[0] for f in flags)
    if not names & NO_PREFLIGHT:
        from .preflight import check_overrides

        # showing the config (--cfg) checks the values but not the files a run would need
        err = check_overrides(STAGES[stage].config, overrides, multirun=bool({"-m", "--multirun"} & names),
                              files=not names & {"--cfg", "-c"})
        if err:
            return fail(err, stage)
    from .apps import run_app

    return run_app(stage, STAGES[stage].config, hargs)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
