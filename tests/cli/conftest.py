"""CLI test helpers: run ``ld3`` in-process with a small, fast configuration in a temporary store."""
import pytest
from ld3_test_helpers import TINY

from ld3_cli.cli.main import main


@pytest.fixture
def ld3(cache, monkeypatch, tmp_path):
    """Call ``ld3 <args>`` in-process from tmp_path with the tiny config; returns the exit status."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        return main([*args, *TINY, f"cache_dir={cache}"])

    return run
