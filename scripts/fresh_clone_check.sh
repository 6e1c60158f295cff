#!/usr/bin/env bash
# Try the README's two commands on a fresh clone of this repository (what a new user or CI does):
#   make demo   (twice: the second run must reuse the store and recompute nothing)
#   make test
# Usage: scripts/fresh_clone_check.sh [target-dir]      (default: a new temporary directory)
set -euo pipefail
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dst=${1:-$(mktemp -d)/ld3}
echo "cloning $src -> $dst"
git clone -q "$src" "$dst"
cd "$dst"
start=$(date +%s)
make demo
t_demo=$(( $(date +%s) - start ))
start=$(date +%s)
make demo | tee second-demo.log
t_demo2=$(( $(date +%s) - start ))
grep -q "already trained" second-demo.log || { echo "second demo run retrained: the store was not reused"; exit 1; }
start=$(date +%s)
make test
t_test=$(( $(date +%s) - start ))
echo "fresh clone OK: make demo ${t_demo}s (includes install), second make demo ${t_demo2}s, make test ${t_test}s"
