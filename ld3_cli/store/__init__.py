"""The on-disk artifact store (see :mod:`ld3_cli.store.artifact` for layout and guarantees)."""
from .artifact import Artifact, Store, current_command
from .files import atomic_write_bytes, atomic_write_text, load_tensors, read_metadata, save_tensors
from .keys import canonical_json, make_key, to_plain, without_neutral

__all__ = ["Artifact", "Store", "atomic_write_bytes", "atomic_write_text", "load_tensors", "read_metadata",
           "save_tensors", "canonical_json", "make_key", "to_plain", "without_neutral", "current_command"]
