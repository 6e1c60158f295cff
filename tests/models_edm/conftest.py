"""EDM tests run on one CPU thread (tiny networks: intra-op threading only adds overhead)."""
from ld3_test_helpers import single_thread  # noqa: F401 - autouse fixture
