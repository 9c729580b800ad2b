#!/usr/bin/env bash
# Train, then export + register + promote the run: what the compose `train` profile runs
# (installed as `rnnops-pipeline` in the training image).
#
#   rnnops-pipeline char --preset quick                      # any `rnnops train` arguments
#   rnnops-pipeline forecast --data etth1 --preset quick --nproc 2
#
# The promotion goes through the registry's gates; serving picks the new champion up by itself
# (it polls the alias every RNNOPS_POLL_SECONDS).
set -euo pipefail
if [ $# -eq 0 ]; then
    set -- char --preset quick
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
rnnops train "$@" | tee "$out"
run=$(sed -n 's/^run id: *//p' "$out" | tail -n 1)
if [ -z "$run" ]; then
    echo "rnnops-pipeline: the training output has no 'run id:' line" >&2
    exit 1
fi
rnnops export "$run" --register --promote
