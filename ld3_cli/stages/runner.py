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

from typing import Any, Callable, Hashable, Optional

from ..errors import EXIT_USER_ERROR, Ld3Error
from .table import STAGES

log = logging.getLogger("ld3")

EXIT_INTERRUPTED = 130
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def one_line(msg) -> str:
    """The message with its whitespace (newlines included) collapsed: the CLI prints errors as one line."""
    return " ".join(str(msg).split())


def _sigterm_to_interrupt(signum, frame):  # pragma: no cover - exercised by the reliability tests
    raise KeyboardInterrupt(f"signal {signum}")


class ModelCache:
    """The model a CLI process has built, by key (model key, device, speed options), one at a time.

    One is made per ``ld3`` command (:func:`ld3_cli.cli.apps.run_app`) and handed to every job's
    :class:`~ld3_cli.stages.context.StageContext`: the jobs of a multirun on one model, and the steps
    of ``ld3 run``, load it once; a job on another model frees the last one before building its own.
    """

    def __init__(self):
        self._key: Optional[Hashable] = None
        self._model: Any = None
        self.builds = 0  # how many models this cache has built

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The model for ``key``: the cached one, else ``build()`` (which replaces it)."""
        if self._model is None or key != self._key:
            self._key = self._model = None  # free the last model before building the next
            model = build()
            self._key, self._model = key, model
            self.builds += 1
        return self._model


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
