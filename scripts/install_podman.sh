#!/usr/bin/env bash
# Install what the container builds and the compose stack test need, from Debian: podman (with
# Debian's runc: crun fails on some cgroup setups), podman-compose, netavark + aardvark-dns (the
# bridge network and its DNS, so containers find each other by service name), iptables, and
# debootstrap (the local base image when no image registry is reachable). Idempotent.
#
#   bash scripts/install_podman.sh          # as root (CI) or with sudo
set -euo pipefail
need=()
for cmd in podman podman-compose runc debootstrap iptables; do
    command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
if [ ${#need[@]} -eq 0 ]; then
    echo "podman: already installed ($(podman --version), $(podman-compose --version 2>/dev/null | grep -i 'podman-compose' | head -n 1))"
    exit 0
fi
. "$(dirname "$0")/apt_install.sh"
apt_install "podman and its tools (${need[*]})" \
    podman podman-compose runc netavark aardvark-dns iptables catatonit debootstrap ca-certificates
command -v podman >/dev/null && command -v podman-compose >/dev/null && command -v debootstrap >/dev/null
