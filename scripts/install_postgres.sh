#!/usr/bin/env bash
# Install Debian's PostgreSQL server (the MLflow backend store of the production shape) so that
# tests/servers.py can start a throwaway cluster. Idempotent: does nothing when a server binary
# (initdb + postgres under /usr/lib/postgresql/*/bin) is already there.
#
#   bash scripts/install_postgres.sh          # as root (CI, containers) or with sudo
#
# It does not start or enable the system cluster: the tests run their own cluster in a temporary
# directory on a free loopback port, as the `postgres` OS user that the package creates.
set -euo pipefail

have_server() {
    for bin in /usr/lib/postgresql/*/bin; do
        [ -x "$bin/initdb" ] && [ -x "$bin/postgres" ] && [ -x "$bin/pg_ctl" ] && return 0
    done
    return 1
}

if have_server && id -u postgres >/dev/null 2>&1; then
    echo "postgresql: already installed ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install_postgres.sh: run as root (or install sudo)" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Install the binaries without creating and starting the default "main" cluster: the tests
# make their own, and a stray system server on :5432 helps nobody.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/rnnops-no-main.conf >/dev/null
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null

have_server || { echo "install_postgres.sh: postgresql installed but no initdb/postgres found under /usr/lib/postgresql/*/bin" >&2; exit 1; }
id -u postgres >/dev/null 2>&1 || { echo "install_postgres.sh: the postgres OS user is missing" >&2; exit 1; }
echo "postgresql: installed ($(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '))"
