#!/usr/bin/env bash
# Local base images for the container builds when no image registry is reachable (CI): a Debian
# bookworm minbase made with debootstrap and imported into podman, and on it
#
#   localhost/rnnops-python:3.11-bookworm     Debian's python3 (3.11) + venv: stands in for python:3.11-slim-bookworm
#   localhost/rnnops-postgres:15-bookworm     Debian's PostgreSQL 15: stands in for postgres:15-bookworm
#   localhost/rnnops-redis:7-bookworm         Debian's Redis 7: stands in for redis:7-bookworm
#
# (docker/ci/Containerfile.*). The Debian root file system is made once and kept in podman's store
# (scripts/podman_env.sh; RNNOPS_REBUILD_BASE=1 makes it again); the three images on it are built
# again when docker/ci/ or the Debian base changed (a label on each image records its inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/podman_env.sh
SUITE=bookworm
MIRROR="${RNNOPS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if [ "${RNNOPS_REBUILD_BASE:-0}" = 1 ] || ! podman image exists localhost/rnnops-debian:$SUITE; then
    root="$RNNOPS_PODMAN_DIR/tmp/debootstrap-$SUITE"
    rm -rf "$root"
    start=$(date +%s)
    echo "base: debootstrap --variant=minbase $SUITE ..."
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$RNNOPS_PODMAN_DIR/tmp/debootstrap.log" 2>&1 \
        || { tail -n 30 "$RNNOPS_PODMAN_DIR/tmp/debootstrap.log" >&2; exit 1; }
    # what the official debian images carry: updates and security, no apt caches
    cat > "$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
    # like debian:bookworm-slim: no apt caches, docs, man pages or message catalogues in the image
    cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
    echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
    cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
DPKG
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/*
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --change 'CMD ["bash"]' - localhost/rnnops-debian:$SUITE >/dev/null 2>&1
    rm -rf "$root"
    echo "base: localhost/rnnops-debian:$SUITE in $(( $(date +%s) - start )) s"
fi

for spec in python:3.11 postgres:15 redis:7; do
    name=${spec%%:*} tag=${spec#*:}
    image=localhost/rnnops-$name:$tag-$SUITE
    # built again only when its inputs (docker/ci/, the Debian base) changed: a label records them
    digest=$( { podman image inspect --format '{{.Id}}' localhost/rnnops-debian:$SUITE; cat docker/ci/*; } | sha256sum | cut -c1-16)
    if [ "$(podman image inspect --format '{{index .Labels "rnnops.inputs"}}' "$image" 2>/dev/null)" = "$digest" ]; then
        continue
    fi
    start=$(date +%s)
    podman build --format docker --quiet --network host --build-arg BASE_IMAGE=localhost/rnnops-debian:$SUITE \
        --label rnnops.inputs="$digest" -f docker/ci/Containerfile.$name -t "$image" docker/ci >/dev/null
    echo "base: $image built in $(( $(date +%s) - start )) s"
done
