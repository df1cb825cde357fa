#!/usr/bin/env bash
# Build the sparse-runtime image with podman (rootful, no Docker daemon needed).
#
#   deploy/image/build.sh [cpu|gpu]        (make image = cpu)
#
# Environment: IMAGE (tag, default sparse-runtime:FLAVOR), BASE (base image; default the
# official python:3.11-slim for cpu, an NVIDIA CUDA runtime image for gpu). When BASE was not
# given and the default cannot be pulled (no registry access), a Debian base is made from
# Debian's packages by make-base.sh and used instead; the GPU image then gets its CUDA user-space
# libraries from the torch / onnxruntime-gpu wheels' nvidia-* dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."

FLAVOR="${1:-${FLAVOR:-cpu}}"
case "$FLAVOR" in
    cpu) default_base="docker.io/library/python:3.11-slim" ;;
    # CUDA 13 + cuDNN 9: what the pinned torch (cu130 wheels) and onnxruntime-gpu 1.31 link.
    gpu) default_base="docker.io/nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04" ;;
    *) echo "usage: $0 [cpu|gpu]" >&2; exit 2 ;;
esac
IMAGE="${IMAGE:-sparse-runtime:$FLAVOR}"
LOCAL_BASE="localhost/sparse-runtime-base:bookworm"
# runc rather than crun: crun refuses hosts with hybrid cgroup v1/v2 mounts (like this one).
PODMAN_RUNTIME="${PODMAN_RUNTIME:-$(command -v runc || true)}"
PULL_TIMEOUT="${PULL_TIMEOUT:-60}"

command -v podman >/dev/null || {
    echo "build: podman is missing (as root: apt-get install -y podman runc debootstrap)" >&2
    exit 1
}

if [ -z "${BASE:-}" ]; then
    if podman image exists "$default_base" \
        || timeout "$PULL_TIMEOUT" podman pull -q "$default_base" >/dev/null 2>&1; then
        BASE="$default_base"
    else
        echo "build: cannot pull $default_base; using a Debian base made from Debian packages"
        deploy/image/make-base.sh "$LOCAL_BASE"
        BASE="$LOCAL_BASE"
    fi
fi

# The host's CA bundle goes in as a build secret, so pip inside the build trusts what the host
# trusts (TLS-intercepting proxies); it is not stored in any image layer.
CA_BUNDLE="${PIP_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
secret=()
[ -s "$CA_BUNDLE" ] && secret=(--secret "id=pip-ca,src=$CA_BUNDLE")

echo "build: $IMAGE (FLAVOR=$FLAVOR, BASE=$BASE)"
start=$(date +%s)
podman build --format docker --layers --pull=never ${PODMAN_RUNTIME:+--runtime "$PODMAN_RUNTIME"} \
    --build-arg "BASE=$BASE" --build-arg "FLAVOR=$FLAVOR" "${secret[@]}" \
    -t "$IMAGE" -f Dockerfile .
end=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "build: $IMAGE built in $((end - start)) s, $((size / 1000000)) MB (base $BASE)"
