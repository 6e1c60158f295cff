#!/usr/bin/env bash
# Time what a new user does first, in a fresh clone of this repository (docs/benchmarks.md, "The first minutes"):
#   make install (not timed), make demo, ld3 eval --nfe 5 and ld3 train --nfe 5 on an empty store, make test.
# Each line: wall, CPU (user + sys of the command and its children) and the 1-minute load average before and
# after -- on a shared machine wall time depends on the others' load, CPU time much less.
# Usage: scripts/first_minutes.sh [target-dir] [steps...]   steps: demo errors test (default: all three)
set -euo pipefail
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
dst=${1:-$(mktemp -d)/ld3}
shift || true
steps=${*:-demo errors test}
[ -d "$dst/.git" ] || git clone -q "$src" "$dst"
cd "$dst"
make install >/dev/null
load() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?"; }
measure() {  # measure LABEL COMMAND...: run it, print one line (its output goes to first-minutes-<label>.log)
    local label=$1 log before real user sys rc=0
    shift
    log="first-minutes-${label// /_}"
    before=$(load)
    { TIMEFORMAT="%R %U %S"; time "$@" >"$log.log" 2>&1 || rc=$?; } 2>"$log.time"
    read -r real user sys <"$log.time"
    awk -v l="$label" -v r="$real" -v u="$user" -v s="$sys" -v b="$before" -v a="$(load)" -v c="$rc" \
        -v d="$(date -u +%Y-%m-%dT%H:%MZ)" 'BEGIN { printf "%-26s wall %6.1f s  CPU %6.1f s (user %.1f + sys %.1f)  load %s -> %s  exit %d  %s\n", l, r, u + s, u, s, b, a, c, d }'
}
for step in $steps; do
    case $step in
        demo) rm -rf ld3-cache; measure "make demo" make demo ;;
        errors)
            for stage in eval train; do
                rm -rf empty-store
                LD3_CACHE=empty-store measure "ld3 $stage --nfe 5 (empty)" .venv/bin/ld3 "$stage" --nfe 5
            done ;;
        test) measure "make test" make test ;;
        *) echo "unknown step $step (demo, errors, test)"; exit 2 ;;
    esac
done
