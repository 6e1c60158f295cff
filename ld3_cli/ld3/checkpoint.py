"""The trainer's resumable state in one file: ``state.safetensors`` (tensors, and the plain data as JSON metadata).

``capture`` (the trainer's checkpoint callback, called between iterations) keeps a copy of the
state and writes it after the first iteration and then whenever ``every_s`` seconds have passed
since the last write; ``write`` writes the last captured copy (used on interrupts and failures,
when the live state may be half-way through an iteration).  Tensors and plain data share one
file, replaced atomically, so they always match.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..store import load_tensors, read_metadata, save_tensors, to_plain

log = logging.getLogger("ld3")
SAVE_EVERY_S = 5.0
STATE_FILE = "state.safetensors"
STATE_META = "ld3_train_state"


def restart_state_name(k: int) -> str:
    """The state file of restart ``k`` (``train.restarts``): ``state.safetensors`` for the first, as a single run's."""
    return STATE_FILE if k == 0 else f"state-restart{k}.safetensors"


class TrainStateFile:
    """The state of an :class:`~ld3_cli.ld3.trainer.LD3Trainer` saved in ``<directory>/<name>`` (``name``:
    ``state.safetensors`` unless :func:`restart_state_name` says otherwise): the
    tensors of :meth:`~ld3_cli.ld3.trainer.LD3Trainer.dump_state` as the file's tensors, its plain data as
    the JSON metadata entry ``ld3_train_state``."""

    def __init__(self, directory: Path, every_s: Optional[float] = None, name: str = STATE_FILE):
        self.directory, self.every_s = Path(directory), float(SAVE_EVERY_S if every_s is None else every_s)
        self.name = name
        self.snapshot = None
        self.last_write = float("-inf")

    @property
    def path(self) -> Path:
        return self.directory / self.name

    def capture(self, trainer, write: bool = False) -> None:
        """Keep a copy of the trainer's state (the checkpoint callback, called between iterations), and write it
        when ``every_s`` seconds have passed since the last write, or at once with ``write``."""
        tensors, info = trainer.dump_state()  # info is a copy already; the tensors are the live ones
        self.snapshot = ({k: v.detach().clone() for k, v in tensors.items()}, info)
        if write or time.monotonic() - self.last_write >= self.every_s:
            self.write()

    def write(self) -> None:
        """Write the last captured state (nothing before the first capture)."""
        if self.snapshot is None:
            return
        tensors, info = self.snapshot
        self.directory.mkdir(parents=True, exist_ok=True)
        save_tensors(self.path, tensors, metadata={STATE_META: json.dumps(to_plain(info))})
        self.last_write = time.monotonic()

    def restore(self, trainer) -> bool:
        """Load a saved state into ``trainer``; False (and a warning) when there is none or it is unusable:
        damaged, of another format (another version of ld3) or of another run."""
        if not self.path.is_file():
            return False
        try:
            meta = read_metadata(self.path)
            if STATE_META not in meta:
                raise ConfigError(f"{self.path} holds no training state")
            trainer.load_state(load_tensors(self.path), json.loads(meta[STATE_META]))
        except Exception as e:  # noqa: BLE001 - a damaged state restarts training cleanly
            log.warning("ignoring unreadable training state %s (%s); starting over", self.path, e)
            return False
        return True
