"""Regenerate ``edm_reference.json`` from an NVlabs/EDM checkout (not a test; run by hand).

    python tests/models_edm/make_edm_reference.py /path/to/edm-checkout

For each tiny architecture in ``edm_testlib.TINY_CASES`` it builds EDM's own network, fills it with
``fill_deterministic`` and records the state-dict keys/shapes and the denoiser output ``D(x, sigma, labels)``
for the probe inputs.  ``test_edm_reference.py`` checks ld3's implementation against these numbers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import edm_testlib as lib


def main(edm_root: str) -> None:
    sys.path.insert(0, edm_root)
    from training import networks  # EDM's code, imported from the given checkout only

    out = {"source": "NVlabs/edm training/networks.py", "cases": {}}
    for name, (precond, kwargs) in lib.TINY_CASES.items():
        torch.manual_seed(0)
        net = lib.fill_deterministic(getattr(networks, precond)(**kwargs))
        x = lib.probe_input()
        labels = lib.probe_labels(kwargs["label_dim"])
        onehot = torch.nn.functional.one_hot(labels, kwargs["label_dim"]).float() if labels is not None else None
        with torch.no_grad():
            d = net(x, torch.tensor(lib.PROBE_SIGMAS), onehot)
        out["cases"][name] = {
            "keys": {k: list(v.shape) for k, v in net.state_dict().items()},
            "output": [round(float(v), 6) for v in d.flatten()],
        }
    path = Path(__file__).with_name("edm_reference.json")
    path.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
