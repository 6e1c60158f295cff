"""AYS: published lists, log-linear resampling, refusal outside the four families."""
import itertools
import math

import numpy as np
import pytest
import torch

from ld3_cli.errors import ConfigError
from ld3_cli.schedules import EDM, VPDiscrete, discretize
from ld3_cli.schedules.ays import ays, ays_tables, loglinear_resample

SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
FAMILIES = ["deepfloyd_if_stage1", "sd15", "sdxl", "svd"]


def test_tables_cover_the_four_families_with_decreasing_lists():
    tables = ays_tables()
    assert sorted(tables) == FAMILIES
    assert list(tables["sd15"]) == SD15
    assert tables["svd"][0] == 700.0 and tables["svd"][-1] == 0.002
    assert tables["deepfloyd_if_stage1"][0] == 160.41
    for vals in tables.values():
        assert len(vals) == 11 and all(a > b > 0 for a, b in itertools.pairwise(vals))


@pytest.mark.parametrize("family", FAMILIES)
def test_ten_steps_return_the_published_list_exactly(family):
    sig = discretize("ays", 10, VPDiscrete.scaled_linear(), model_family=family)
    assert sig.dtype == torch.float64
    assert sig.tolist() == list(ays_tables()[family])


def test_five_steps_take_every_second_entry():
    sig = ays(5, None, model_family="sd15")
    assert sig.tolist() == [14.615, 3.861, 1.886, 0.963, 0.399, 0.029]


@pytest.mark.parametrize("family", FAMILIES)
def test_twenty_steps_keep_originals_and_insert_geometric_means(family):
    orig = ays_tables()[family]
    sig = ays(20, None, model_family=family).tolist()
    assert len(sig) == 21
    assert sig[0::2] == list(orig)
    for j in range(10):
        assert sig[2 * j + 1] == pytest.approx(math.sqrt(orig[j] * orig[j + 1]), rel=1e-13)


@pytest.mark.parametrize("n", [1, 3, 4, 7, 13, 32])
def test_other_lengths_match_numpy_interp_of_the_reversed_list(n):
    # the how-to page's formulation: increasing order, np.interp on log sigma, reversed back
    orig = np.array(ays_tables()["sdxl"])
    xs = np.linspace(0, 1, 11)
    ref = np.exp(np.interp(np.linspace(0, 1, n + 1), xs, np.log(orig[::-1])))[::-1]
    got = ays(n, None, model_family="sdxl").numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    assert got[0] == orig[0] and got[-1] == orig[-1]
    assert np.all(np.diff(got) < 0)


def test_loglinear_resample_of_geometric_sequence_is_geometric():
    vals = [2.0 ** -k for k in range(5)]
    out = loglinear_resample(vals, 8)
    np.testing.assert_allclose(out, [2.0 ** (-k / 2) for k in range(9)], rtol=1e-14)


def test_family_aliases():
    assert ays(10, None, model_family="SD1.5").tolist() == SD15
    assert ays(10, None, model_family="deepfloyd_if").tolist() == list(ays_tables()["deepfloyd_if_stage1"])


@pytest.mark.parametrize("family", [None, "edm", "ldm", "cifar10"])
def test_refuses_models_without_a_published_list(family):
    opts = {} if family is None else {"model_family": family}
    with pytest.raises(ConfigError, match="only for the model families") as e:
        discretize("ays", 5, EDM(), **opts)
    assert "sd15" in str(e.value) and "model_family" in str(e.value)
