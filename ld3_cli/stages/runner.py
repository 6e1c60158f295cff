"""Run one stage for one composed config: errors become one line and exit 2, interrupts exit 130.

User errors (:class:`~ld3_cli.errors.Ld3Error`) and a full disk (``ENOSPC`` / ``EDQUOT``: the
store's atomic writes keep every finished file, so rerunning resumes) print one line on stderr
and exit with status 2; Ctrl-C and SIGTERM exit with status 130.  Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import errno
import importlib
import logging
import signal
import sys

from typing import TYPE_CHECKING, Optional

from ..errors import EXIT_USER_ERROR, Ld3Error
from .table import STAGES

if TYPE_CHECKING:  # the context module imports torch: the runner loads it only when a stage runs
    from .context import ModelCache

log = logging.getLogger("ld3")

EXIT_INTERRUPTED = 130
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def one_line(msg) -> str:
    """The message with its whitespace (newlines included) collapsed: the CLI prints errors as one line."""
    return " ".join(str(msg).split())


def _sigterm_to_interrupt(signum, frame):  # pragma: no cover - exercised by the reliability tests
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(stage: str, cfg, models: Optional[ModelCache] = None):
    """Entry point of every stage's Hydra app; ``models``: the command's model cache (default: a new one)."""
    from .checks import check_config
    from .context import StageContext, configure_torch, hydra_overrides

    try:
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    except ValueError:  # not the main thread (e.g. inside a test harness)
        pass
    try:
        msg = check_config(cfg)
        if msg:
            raise Ld3Error(msg)
        configure_torch(cfg)
        module = importlib.import_module(f"ld3_cli.stages.{STAGES[stage].module}")
        ctx = StageContext(cfg, stage, hydra_overrides(), models)
        return module.run(ctx)
    except Ld3Error as e:
        print(f"ld3 {stage}: error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as e:
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        where = f" while writing {e.filename}" if e.filename else ""
        print(f"ld3 {stage}: error: no space left on the device{where}; finished work is kept in the store -- free "
              "some space and rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"ld3 {stage}: interrupted; finished work is saved in the store -- rerun the same command to resume",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
