#!/usr/bin/env bash
# Build the three images of docker-compose.yml with podman, on a local base (what `make images` and
# CI run), and print their sizes and build times:
#
#   rnnops-serving:$RNNOPS_TAG    docker/Dockerfile.serving   (no torch: checked after the build)
#   rnnops-mlflow:$RNNOPS_TAG     docker/Dockerfile.mlflow
#   rnnops-training:$RNNOPS_TAG   docker/Dockerfile.training  (torch 2.13.0 CPU build)
#
#   bash scripts/build_images.sh [serving|mlflow|training ...]     # default: all three
#
# RNNOPS_BASE_IMAGE: the BASE_IMAGE build arg (default: localhost/rnnops-python:3.11-bookworm from
# scripts/base_images.sh; python:3.11-slim-bookworm where a registry is reachable).
# pip inside the builds uses this machine's pip configuration: its settings (`pip config list`)
# go into a pip.conf mounted at /etc/pip.conf, with the local files and folders they name (CA
# file, find-links, file:// indexes, constraint files) mounted read-only at the same paths. So a
# machine whose pip has a mirror or local wheels (torch's CPU build) builds with them; the
# mounts live only during the RUN steps and are not in any image. pip's download cache is a build
# cache mount shared by the three builds (podman's store: scripts/podman_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_podman.sh >/dev/null
. scripts/podman_env.sh
TAG="${RNNOPS_TAG:-latest}"
BASE="${RNNOPS_BASE_IMAGE:-localhost/rnnops-python:3.11-bookworm}"
if [ -z "${RNNOPS_BASE_IMAGE:-}" ]; then
    bash scripts/base_images.sh
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(serving mlflow training)

# --- the host's pip configuration, for the builds
pipdir="$RNNOPS_PODMAN_DIR/pip"
mkdir -p "$pipdir"
conf="$pipdir/pip.conf"
mounts=(--volume "$conf:/etc/pip.conf:ro")
local_wheel_dirs=()
{
    echo "[global]"
    python3 -m pip config list 2>/dev/null | sed -E "s/^[^.]*\.([a-z-]+)='(.*)'$/\1 \2/" |
        awk '!seen[$1]++' | while read -r key value; do
            case "$key" in
                cert|find-links|extra-index-url|index-url|constraint|default-timeout|trusted-host|retries) ;;
                *) continue ;;
            esac
            echo "$key = $value"
        done
} > "$conf.new"
mv "$conf.new" "$conf"
while read -r key value; do
    for v in $value; do
        path=${v#file://}
        path=${path%/}
        [ -e "$path" ] || continue
        case "$key" in find-links|extra-index-url|index-url) local_wheel_dirs+=("$path") ;; esac
        # a local "simple" index links to files beside it (../files/...): mount its parent
        [ "${path##*/}" = simple ] && path=${path%/simple}
        mounts+=(--volume "$path:$path:ro")
    done
done < <(sed -n 's/^\([a-z-]*\) = \(.*\)$/\1 \2/p' "$conf")

# torch: the CPU wheel from pip's own configuration when it has one locally, else PyTorch's CPU index
torch_index=https://download.pytorch.org/whl/cpu
for d in "${local_wheel_dirs[@]}"; do
    if compgen -G "$d/torch-2.13.0+cpu-*.whl" >/dev/null || compgen -G "$d/torch/torch-2.13.0+cpu-*.whl" >/dev/null; then
        torch_index=""
    fi
done
torch_index="${RNNOPS_TORCH_INDEX-$torch_index}"

# What an image is built from: its Dockerfile, the build context as .dockerignore filters it, the
# base image, the build arguments and pip's configuration. Kept as a label: an image whose inputs
# did not change is not rebuilt at all (with vfs storage even a build served entirely from the
# layer cache copies every stage's tree, minutes for the training image).
inputs() {  # name, build args...
    local name=$1
    shift
    {
        echo "$*"
        podman image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || echo "$BASE"
        cat "$conf"
        python3 scripts/context_digest.py "docker/Dockerfile.$name"
    } | sha256sum | cut -c1-16
}

build() {  # name, extra args...
    local name=$1
    shift
    local start=$(date +%s) digest have
    digest=$(inputs "$name" "$@")
    have=$(podman image inspect --format '{{index .Labels "rnnops.inputs"}}' "rnnops-$name:$TAG" 2>/dev/null || true)
    if [ "$have" = "$digest" ] && [ "${RNNOPS_FORCE_BUILD:-0}" != 1 ]; then
        echo "images: rnnops-$name:$TAG is up to date (inputs $digest)"
        return 0
    fi
    local old
    old=$(podman image inspect --format '{{.Id}}' "rnnops-$name:$TAG" 2>/dev/null || true)
    echo "images: building rnnops-$name:$TAG on $BASE ..."
    # --format docker: the images keep their HEALTHCHECK (the OCI format has none)
    podman build --format docker --network host --layers "${mounts[@]}" --build-arg BASE_IMAGE="$BASE" "$@" \
        --label rnnops.inputs="$digest" \
        -f "docker/Dockerfile.$name" -t "rnnops-$name:$TAG" . > "$RNNOPS_PODMAN_DIR/tmp/build-$name.log" 2>&1 \
        || { tail -n 40 "$RNNOPS_PODMAN_DIR/tmp/build-$name.log" >&2; echo "images: rnnops-$name failed (log above)" >&2; return 1; }
    echo "images: rnnops-$name:$TAG built in $(( $(date +%s) - start )) s"
    # the image this build replaced (now untagged) goes, or every rebuild keeps 1-2 GB more
    # in the store; its layers the new image shares stay
    if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "rnnops-$name:$TAG")" ]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}
for t in "${targets[@]}"; do
    case "$t" in
        serving) build serving ;;
        mlflow) build mlflow ;;
        training) build training --build-arg TORCH_INDEX="$torch_index" ;;
        *) echo "unknown image: $t (serving, mlflow, training)" >&2; exit 2 ;;
    esac
done
echo "images (size as podman reports it, uncompressed):"
for t in "${targets[@]}"; do
    printf '  %-28s %s\n' "rnnops-$t:$TAG" "$(podman image inspect --format '{{.Size}}' "rnnops-$t:$TAG" | awk '{printf "%.0f MB", $1/1e6}')"
done
