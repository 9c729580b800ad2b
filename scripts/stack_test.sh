#!/usr/bin/env bash
# The compose stack, end to end with podman (what `make stack-test` and CI run after the unit
# suite): tests/test_stack.py with the project's venv, podman's project-local configuration
# (scripts/podman_env.sh) and the images of `make images`. Prints the timings it measured
# (container start-ups, time to pick up a champion, the Bento build) and its total time.
#
#   bash scripts/stack_test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_podman.sh >/dev/null
. scripts/podman_env.sh
PY="${PY:-.venv/bin/python}"
report="${RNNOPS_STACK_REPORT:-$RNNOPS_PODMAN_DIR/stack-test.json}"
rm -f "$report"
start=$(date +%s)
status=0
RNNOPS_STACK_TEST=1 RNNOPS_STACK_REPORT="$report" "$PY" -m pytest tests/test_stack.py -v -p no:cacheprovider "$@" || status=$?
echo "stack test: $(( $(date +%s) - start )) s, exit $status; measured:"
[ -f "$report" ] && python3 -c 'import json, sys; [print(f"  {k}: {v}") for k, v in json.load(open(sys.argv[1])).items()]' "$report"
# nothing of the stack may be left running, whatever happened
left=$(podman ps -a --filter label=io.podman.compose.project="${RNNOPS_STACK_PROJECT:-rnnops-ci}" --format '{{.Names}}')
if [ -n "$left" ]; then
    echo "stack test: containers left running: $left" >&2
    status=1
fi
exit $status
