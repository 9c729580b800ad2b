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
source "$(dirname "$0")/apt_install.sh"
apt_install "an HTTP load generator, for the benchmarks" wrk
command -v wrk
