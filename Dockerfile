# sparse-runtime container image. CPU by default; GPU with --build-arg FLAVOR=gpu.
#
#   make image                                      # CPU image, see deploy/image/build.sh
#   podman build --format docker -t sparse-runtime:cpu .
#   podman build --format docker -t sparse-runtime:gpu --build-arg FLAVOR=gpu \
#       --build-arg BASE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 .
#
# BASE may be any Debian/Ubuntu image: python3 and venv are installed from the base's own apt
# archive when it lacks them (the CUDA runtime bases do). Where no registry can be reached,
# deploy/image/make-base.sh builds a Debian base from Debian packages (debootstrap).
# `--format docker` keeps the HEALTHCHECK (the OCI image format has no field for it).
ARG BASE=python:3.11-slim

FROM ${BASE} AS base
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            ca-certificates python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# ---------------------------------------------------------------------------------------------
FROM base AS builder
ARG FLAVOR=cpu
# onnxruntime-gpu replaces onnxruntime (both install the `onnxruntime` module and conflict);
# torch drives the 2:4 sparse engine (cuSPARSELt). Pinned so GPU builds are reproducible; both
# are CUDA 13 builds (torch 2.13.0 from PyPI is cu130), hence a CUDA 13 runtime base.
ARG ORT_GPU_VERSION=1.31.1
ARG TORCH_VERSION=2.13.0
ARG PYBIND11_VERSION=3.1.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/constraints.txt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (never stored in a
# layer): --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt (build.sh does).
# deploy/image/constraints.txt pins the dependency closure the test suite ran with
# (deploy/image/lock.py writes it): reproducible, and no long pip backtracking.
COPY pyproject.toml README.md* ./
COPY deploy/image/constraints.txt /src/constraints.txt
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    test -f README.md || touch README.md; \
    mkdir -p runtime && touch runtime/__init__.py \
    && pip install . \
    && if [ "$FLAVOR" = gpu ]; then \
        pip uninstall -y onnxruntime \
        && pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" "torch==${TORCH_VERSION}"; \
    elif [ "$FLAVOR" != cpu ]; then \
        echo "FLAVOR must be cpu or gpu, not '$FLAVOR'" >&2; exit 1; \
    fi \
    && pip uninstall -y sparse-runtime \
    && rm -rf runtime build ./*.egg-info

COPY runtime ./runtime
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    rm -rf build && pip install --no-deps . \
    && cmp runtime/__init__.py "$(python -I -c 'import runtime; print(runtime.__file__)')" \
    && rm -rf /opt/venv/share/man

# The native gRPC frontend (--grpc-frontend native): built against the base's own Debian/Ubuntu
# grpc++ where its apt archive has one; the names of the runtime packages it needs are kept for
# the final stage. Without grpc++ the image is built without it (the python frontend needs none).
# hadolint ignore=SC2086
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    pkgs="g++ pkg-config libgrpc++-dev"; \
    include=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
    [ -f "$include/Python.h" ] || pkgs="$pkgs python3-dev"; \
    if apt-get update >/dev/null \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $pkgs >/dev/null; \
    then \
        pip install "pybind11==${PYBIND11_VERSION}" \
        && python -I -m runtime.server.native.build \
        && pip uninstall -y pybind11 \
        && dpkg-query -W -f='${Package}\n' 'libgrpc++1*' > /opt/venv/native-runtime-packages; \
    else \
        echo "native gRPC frontend: no grpc++ in this base's archive; built without it"; \
    fi; \
    rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
FROM base
ARG FLAVOR=cpu
LABEL org.opencontainers.image.title="sparse-runtime" \
      org.opencontainers.image.description="Triton-compatible gRPC runtime for dense, pruned and 2:4-sparse ONNX models" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.sparse-runtime.flavor="${FLAVOR}"

RUN groupadd --gid 10001 sparse \
    && useradd --uid 10001 --gid sparse --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin sparse

COPY --from=builder /opt/venv /opt/venv
RUN if [ -s /opt/venv/native-runtime-packages ]; then \
        apt-get update >/dev/null \
        && DEBIAN_FRONTEND=noninteractive xargs apt-get install -y --no-install-recommends \
            < /opt/venv/native-runtime-packages >/dev/null \
        && apt-get clean && rm -rf /var/lib/apt/lists/* \
        && /opt/venv/bin/python -c 'import runtime.server.native._grpc_bridge'; \
    fi

# Read-only root filesystems work: no bytecode is written at run time (pip compiled it), and
# the server binds 0.0.0.0 so Kubernetes gRPC probes and published ports reach it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SPARSE_RUNTIME_HOST=0.0.0.0 \
    SPARSE_RUNTIME_HTTP_PORT=8000 \
    SPARSE_RUNTIME_GRPC_PORT=8001 \
    SPARSE_RUNTIME_METRICS_PORT=8002

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8001 8002

# gRPC health (grpc.health.v1, service "" = server ready); no curl in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["sparse-runtime", "health", "--timeout", "3"]

ENTRYPOINT ["sparse-runtime", "serve", "--model-repository", "/models"]
