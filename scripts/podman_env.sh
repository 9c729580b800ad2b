# Sourced (`. scripts/podman_env.sh`) by the container scripts: points podman (and podman-compose,
# and `bentoml containerize --backend podman`, which call it) at a project-local configuration,
# so that nothing is written to /etc/containers or ~/.config/containers:
#
#   storage   vfs driver (works on any filesystem, also inside a container or on overlay roots)
#   runtime   runc, cgroupfs (no systemd needed), no default ulimits (some hosts refuse them),
#             events and logs to files
#
# RNNOPS_PODMAN_DIR holds the config, the image store and the build cache; it survives between
# the CI steps (and runs), so every build after the first reuses its layers.
# Default: ~/.cache/rnnops/podman. The runtime state goes to RNNOPS_PODMAN_RUN (tmpfs: /run/...).
RNNOPS_PODMAN_DIR="${RNNOPS_PODMAN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rnnops/podman}"
if [ "$(id -u)" -eq 0 ]; then
    RNNOPS_PODMAN_RUN="${RNNOPS_PODMAN_RUN:-/run/rnnops-podman}"
else
    RNNOPS_PODMAN_RUN="${RNNOPS_PODMAN_RUN:-${XDG_RUNTIME_DIR:-/tmp/rnnops-podman-$(id -u)}/rnnops-podman}"
fi
mkdir -p "$RNNOPS_PODMAN_DIR/storage" "$RNNOPS_PODMAN_DIR/tmp" "$RNNOPS_PODMAN_RUN"
cat > "$RNNOPS_PODMAN_DIR/storage.conf.new" <<CONF
[storage]
driver = "vfs"
graphroot = "$RNNOPS_PODMAN_DIR/storage"
runroot = "$RNNOPS_PODMAN_RUN/storage"
CONF
cat > "$RNNOPS_PODMAN_DIR/containers.conf.new" <<CONF
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RNNOPS_PODMAN_RUN/libpod"
image_copy_tmp_dir = "$RNNOPS_PODMAN_DIR/tmp"

[network]
network_backend = "netavark"
CONF
# replace only when changed (a running podman keeps reading the same file)
for f in storage.conf containers.conf; do
    if cmp -s "$RNNOPS_PODMAN_DIR/$f.new" "$RNNOPS_PODMAN_DIR/$f"; then
        rm -f "$RNNOPS_PODMAN_DIR/$f.new"
    else
        mv "$RNNOPS_PODMAN_DIR/$f.new" "$RNNOPS_PODMAN_DIR/$f"
    fi
done
export CONTAINERS_STORAGE_CONF="$RNNOPS_PODMAN_DIR/storage.conf"
export CONTAINERS_CONF="$RNNOPS_PODMAN_DIR/containers.conf"
export TMPDIR="${TMPDIR:-$RNNOPS_PODMAN_DIR/tmp}"
export RNNOPS_PODMAN_DIR RNNOPS_PODMAN_RUN
# Docker image format: keeps HEALTHCHECK (the OCI format drops it), also for `bentoml containerize`.
export BUILDAH_FORMAT=docker
