"""Fixtures of the reliability suite: small stores made once per session, copied per test.

The helpers (running the CLI, looking at a store, subprocesses) live in reliability_testlib.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ld3_test_helpers import single_thread  # noqa: F401 - autouse: one torch thread, as in the subprocesses
from reliability_testlib import CACHE, build_store


@pytest.fixture(autouse=True)
def _no_fault_from_the_environment(monkeypatch):
    """No fault or pace from the environment (each CLI call builds its own model, so a fault counts afresh)."""
    monkeypatch.delenv("LD3_TEST_FAULT", raising=False)
    monkeypatch.delenv("LD3_TEST_PACE", raising=False)


@pytest.fixture(scope="session")
def session_stores(tmp_path_factory):
    """Lazily built stores, one per level, shared by the whole session (only ever copied)."""
    made: dict[str, Path] = {}

    def get(upto: str) -> Path:
        if upto not in made:
            made[upto] = build_store(tmp_path_factory.mktemp(f"store-{upto}"), upto)
        return made[upto]

    return get


@pytest.fixture
def store_copy(session_stores, tmp_path):
    """``store_copy(upto, where="a")`` copies a session store to ``tmp_path/where/ld3-cache``."""

    def copy(upto: str | None, where: str = "a") -> Path:
        dst = tmp_path / where / CACHE
        if upto is None:
            dst.mkdir(parents=True)
        else:
            shutil.copytree(session_stores(upto), dst)
        return dst

    return copy
