# sparse-runtime: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
REPO ?= model_repo
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
EXTRAS ?= dev,compare

.PHONY: install models serve test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

models: install
	$(BIN)/sparse-runtime build-samples --model-repository $(REPO)

serve: models
	$(BIN)/sparse-runtime serve --model-repository $(REPO) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT)

test: models
	$(BIN)/ruff check runtime tests benchmarks
	$(PY) -m pytest -q -ra

bench: models
	$(PY) benchmarks/serve_bench.py

lint: install
	$(BIN)/ruff check runtime tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
