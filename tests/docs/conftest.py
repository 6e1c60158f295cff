"""Doc-test fixtures: ``store`` is a private store that already holds the mixture fit."""
import pytest


@pytest.fixture
def store(cache):
    return cache
