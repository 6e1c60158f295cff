"""User-facing errors.

Every problem a user can fix (bad configuration, a missing file, a corrupted store entry,
an impossible NFE) is raised as :class:`Ld3Error` with a one-line message that names the
problem and the fix.  The CLI prints it without a traceback and exits with status 2; any
other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2


class Ld3Error(Exception):
    """A problem with the user's input or environment, stated with its fix."""


class ConfigError(Ld3Error):
    """An invalid or impossible configuration value."""


class MissingArtifactError(Ld3Error):
    """A stage input that is not in the store yet; the message names the producing command."""


class CorruptArtifactError(Ld3Error):
    """A store entry that exists but fails validation; the message names the rebuild command."""


class MissingFileError(Ld3Error):
    """A weights / data file that must be supplied by the user (the message says where)."""


class UnsafeCheckpointError(Ld3Error):
    """A checkpoint that would need arbitrary code execution to load."""


class NumericalError(Ld3Error):
    """NaN / Inf met during training or sampling."""
