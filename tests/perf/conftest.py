"""Performance tests run on one CPU thread (tiny networks are fastest and steadiest there on a shared machine)."""
from ld3_test_helpers import single_thread  # noqa: F401 - autouse fixture
