#!/usr/bin/env bash
# `make image-test`: run the built image with the sample model_repo/ mounted read-only, wait for
# its HEALTHCHECK (sparse-runtime health, gRPC health service) to pass, run a tritonclient
# inference and scrape /metrics from outside the container, check that SIGTERM stops it with
# exit code 0, then remove it.
#
#   deploy/image/test.sh [IMAGE]        default IMAGE: sparse-runtime:cpu
#   GRPC_FRONTEND=native deploy/image/test.sh   the same through the native gRPC frontend
#
# Needs root, podman (+ runc on hosts with hybrid cgroups), model_repo/ built (make models) and
# .venv (for tritonclient).
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${1:-${IMAGE:-sparse-runtime:cpu}}"
PY="${PY:-.venv/bin/python}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-120}"
NAME="sparse-runtime-test-$$"
PODMAN_RUNTIME="${PODMAN_RUNTIME:-$(command -v runc || true)}"

ls model_repo/*/1/model.onnx >/dev/null 2>&1 || {
    echo "image-test: model_repo has no built models (run: make models)" >&2
    exit 1
}
podman image exists "$IMAGE" || {
    echo "image-test: image $IMAGE is missing (run: make image)" >&2
    exit 1
}

read -r GRPC_PORT METRICS_PORT < <("$PY" - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)

# Hosts without CAP_SYS_RESOURCE (like these sandboxes) cannot apply podman's default rlimits
# (it raises nofile/nproc to 1M): ask for modest limits, never above the shell's own.
lim() { local hard; hard=$(ulimit "-H$1"); [ "$hard" = unlimited ] || [ "$hard" -gt 16384 ] && hard=16384; echo "$hard"; }
run_opts=(
    --ulimit "nofile=$(lim n):$(lim n)"
    --ulimit "nproc=$(lim u):$(lim u)"
)
[ -n "${GRPC_FRONTEND:-}" ] && run_opts+=(-e "SPARSE_RUNTIME_GRPC_FRONTEND=$GRPC_FRONTEND")
global_opts=()
[ -n "$PODMAN_RUNTIME" ] && global_opts=(--runtime "$PODMAN_RUNTIME")

cleanup() {
    if podman container exists "$NAME"; then
        echo "image-test: container log (last 40 lines):"
        podman logs "$NAME" 2>&1 | tail -40 || true
        podman rm -f "$NAME" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

echo "image-test: starting $IMAGE as $NAME (gRPC 127.0.0.1:$GRPC_PORT, metrics 127.0.0.1:$METRICS_PORT)"
start=$(date +%s)
podman "${global_opts[@]}" run -d --name "$NAME" "${run_opts[@]}" \
    --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
    -p "127.0.0.1:$GRPC_PORT:8001" -p "127.0.0.1:$METRICS_PORT:8002" \
    -v "$PWD/model_repo:/models:ro" \
    "$IMAGE" >/dev/null

# The image's own HEALTHCHECK command, run in the container.
healthy=""
for _ in $(seq 1 "$HEALTH_TIMEOUT"); do
    if podman healthcheck run "$NAME" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != "true" ]; then
        echo "image-test: container exited" >&2
        exit 1
    fi
    sleep 1
done
[ -n "$healthy" ] || { echo "image-test: not healthy after ${HEALTH_TIMEOUT}s" >&2; exit 1; }
echo "image-test: healthy after $(( $(date +%s) - start )) s"

"$PY" deploy/image/check_image.py --grpc "127.0.0.1:$GRPC_PORT" \
    --metrics "http://127.0.0.1:$METRICS_PORT/metrics"

podman stop -t 30 "$NAME" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { echo "image-test: exit code $code after SIGTERM (expected 0)" >&2; exit 1; }
echo "image-test: SIGTERM -> exit 0"
podman rm -f "$NAME" >/dev/null
echo "image-test: PASS ($IMAGE, $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
