#!/bin/sh
# Every benchmark in bench/, in one boot of the VM (make bench runs
# `tests/vm/run.py sh bench/run-all.sh`). Each one runs even if an earlier one
# failed; the exit status is non-zero if any failed.
set -u
ulimit -n 1048576 2>/dev/null || ulimit -n 65536 2>/dev/null || true
status=0
run() {
    echo "== $*"
    "$@" || { echo "== FAILED ($?): $*"; status=1; }
}
run python bench/apply.py
run python bench/detection.py
# A load both daemons sustain in the VM (CPU per probe comparable), then the full one.
run python bench/scale.py --services 10 --per-service 100
run python bench/scale.py --services 100 --per-service 100
exit $status
