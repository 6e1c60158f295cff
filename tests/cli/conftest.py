"""CLI test helpers: run ``ld3`` in-process with a small, fast configuration in a temporary store."""
import pytest
from ld3_test_helpers import TINY

from ld3_cli.cli.main import main


@pytest.fixture
def ld3(cache, monkeypatch, tmp_path):
    """Call ``ld3 <args>`` in-process from tmp_path with the tiny config; returns the exit status."""
    monkeypatch.chdir(tmp_path)

    def run(*args, tiny=True):
        extra = (TINY if tiny else []) + [f"cache_dir={cache}"]
        args = list(args)
        stage, rest = args[0], args[1:]
        return main([stage, *rest, *extra]) if stage not in ("--help", "-h") else main(args)

    return run
