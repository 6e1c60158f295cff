#!/usr/bin/env bash
# What ld3 does on your GPU, in one timed run (<= 8 minutes on one H100 / H200; docs/benchmarks.md, "GPU"):
#
#   scripts/device_check.sh [OUT_DIR] [options of scripts/device_check.py]
#   scripts/device_check.sh gpu-check --mnist-ddpm /path/to/ddpm_mnist_starter.pth   # + the MNIST DDPM grid
#   LD3_DEVICE_BUDGET_S=1200 scripts/device_check.sh gpu-check                        # a longer budget
#
# Writes OUT_DIR/device_check.json and OUT_DIR/device_check.md (rewritten after every step, so a run cut
# short keeps what finished) and one log per step.  Needs torch with CUDA plus hydra-core, omegaconf,
# lpips and pytorch-fid: from `pip install -e .`, or, on a machine without a package index, as wheels in
# $LD3_WHEELS (default .whl/ in the repository), which are installed into a temporary folder first.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-device-check}
shift || true
py=${PYTHON:-python3}
wheels=${LD3_WHEELS:-$repo/.whl}
if ! "$py" -c "import torch, torchvision" 2>/dev/null; then
    echo "device_check: $py has no torch / torchvision; set PYTHON to the interpreter that has them" \
         "(e.g. PYTHON=.venv/bin/python)" >&2
    exit 2
fi
if ! "$py" -c "import hydra, omegaconf, lpips, pytorch_fid" 2>/dev/null; then
    if compgen -G "$wheels/*.whl" >/dev/null; then
        site=$(mktemp -d)
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "device_check: hydra-core, omegaconf, lpips or pytorch-fid is missing and $wheels holds no wheels;" \
             "run 'pip install -e .' in $repo, or put the wheels there (docs/benchmarks.md, 'GPU')" >&2
        exit 2
    fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$py" "$repo/scripts/device_check.py" --out "$out" "$@"
