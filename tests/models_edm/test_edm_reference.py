"""ld3's EDM networks against numbers recorded from NVlabs/EDM's own implementation (edm_reference.json).

The fixture was produced by make_edm_reference.py: EDM's networks, tiny configurations of every
architecture, deterministic weights; it records state-dict keys/shapes and D(x, sigma, labels).
"""
from __future__ import annotations

import json
from pathlib import Path

import edm_testlib as lib
import pytest
import torch

REF = json.loads(Path(__file__).with_name("edm_reference.json").read_text())["cases"]


@pytest.mark.parametrize("case", sorted(lib.TINY_CASES))
def test_state_dict_names_and_shapes_match_edm(case):
    net, _ = lib.build_tiny(case)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == REF[case]["keys"]


@pytest.mark.parametrize("case", sorted(lib.TINY_CASES))
def test_denoiser_output_matches_edm(case):
    net, kwargs = lib.build_tiny(case)
    with torch.no_grad():
        d = net(lib.probe_input(), torch.tensor(lib.PROBE_SIGMAS), lib.probe_labels(kwargs["label_dim"]))
    ref = torch.tensor(REF[case]["output"]).reshape(d.shape)
    # compare the network's contribution c_out * F = D - c_skip x, which must be non-trivial
    c_skip = net.coefficients(torch.tensor(lib.PROBE_SIGMAS).reshape(-1, 1, 1, 1))[0]
    skip = c_skip * lib.probe_input()
    ours, theirs = d - skip, ref - skip
    scale = float(theirs.abs().max())
    assert scale > 0.5
    assert torch.allclose(ours, theirs, rtol=0, atol=2e-5 * scale), float((ours - theirs).abs().max())
