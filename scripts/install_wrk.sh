#!/usr/bin/env bash
# Make sure `wrk` (a C HTTP load generator) is on PATH for benchmarks/forecast_http.py.
# Does nothing when it is there; otherwise installs Debian's/Ubuntu's `wrk` package with apt-get
# (as root, or through sudo). Without it the benchmark falls back to a Python (httpx) client,
# which on a small machine is itself the bottleneck: see docs/benchmarks.md.
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  echo "wrk found: $(command -v wrk)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no wrk and no apt-get here; install wrk (https://github.com/wg/wrk) and put it on PATH" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "installing wrk (HTTP load generator for the benchmarks)..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends wrk >/dev/null
command -v wrk
