#!/usr/bin/env bash
# Install Debian's Redis server so that the tests can start their own `redis-server` (the shared
# forecast-session store, RNNOPS_SESSION_STORE=redis://...). Idempotent. The tests run their own
# server on a free loopback port in a temporary directory: nothing is started or enabled here.
#
#   bash scripts/install_redis.sh          # as root (CI, containers) or with sudo
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    echo "redis: already installed ($(redis-server --version | cut -d' ' -f3))"
    exit 0
fi
. "$(dirname "$0")/apt_install.sh"
apt_install "the Redis server" redis-server
command -v redis-server >/dev/null
