"""Shared fixtures: stage contexts composed from the real config tree, one tiny learned-schedule store.

The store is made once per test session in-process (teacher-sample + train on a rank-16
mixture model with tiny budgets, a few seconds) and only read afterwards.  Tests that write put their
outputs under their own ``tmp_path`` (``export.out``, ``schedules.out``, ``fid_ref.out``).
"""
from __future__ import annotations

import pytest
import torch

from ld3_test_helpers import one_thread
from stages_export_helpers import make_ctx


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def learned_store(tmp_path_factory):
    """``(store root, learned-schedule artifact)`` for unipc order 3, NFE 5 on the mixture model."""
    from ld3_cli.stages import teacher_sample, train

    store = tmp_path_factory.mktemp("ld3store")
    with one_thread():  # session fixtures are set up before the module-scoped one_torch_thread
        teacher_sample.run(make_ctx("teacher-sample", store))
        art = train.run(make_ctx("train", store))
    return store, art


@pytest.fixture(scope="session")
def learned_tensors(learned_store):
    _, art = learned_store
    t = art.tensors()
    return {k: v.to(torch.float64) for k, v in t.items()}
