# The two commands a new user needs: `make serve` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PRESET ?= ci
MODEL ?=
NAME ?=
PRECISION ?= auto
TARGET ?= cpu
SERVE_ARGS ?=

.PHONY: serve test test-slow install install-dev lint export export-tiny benchmark gpu-check soak fuzz deploy-check cluster clean

# Stamps: re-install only when pyproject.toml changes.
$(VENV)/.stamp-runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -c 'from server.models.providers.fused_attention import main; main()'
	touch $@

# The real CLIP BPE vocabulary ships inside open-clip-torch; --no-deps keeps its torchvision
# requirement (which would fight the pinned CPU torch) out. Nothing imports open_clip itself.
# The dev extra brings the `playwright` package only: the browser tests drive Debian's
# /usr/bin/chromium (.ci/run installs it), so no `playwright install` browser download.
$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-runtime
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m pip install -q --no-deps open-clip-torch
	touch $@

install: $(VENV)/.stamp-runtime

install-dev: $(VENV)/.stamp-dev

serve: install
	INPAINT_HOST=$(HOST) INPAINT_PORT=$(PORT) $(PY) -m server $(SERVE_ARGS)

test: install-dev
	$(PY) -m pytest -q

test-slow: install-dev
	$(PY) -m pytest -q -m slow

lint: install-dev
	$(PY) -m ruff check server export benchmarks tests
	$(PY) -m ruff format --check server export benchmarks tests

export: install-dev
	@test -n "$(MODEL)" || { echo 'usage: make export MODEL=<hub id or diffusers folder> [NAME=...] [PRECISION=auto|fp32|fp16] [TARGET=cpu|cuda]'; exit 2; }
	$(PY) -m export --model "$(MODEL)" $(if $(NAME),--name "$(NAME)") --precision $(PRECISION) --target $(TARGET)

export-tiny: install-dev
	$(PY) -m export --tiny --out models/tiny-sd-inpaint

benchmark: install-dev
	$(PY) -m benchmarks --preset $(PRESET)

# GPU check on a lent GPU machine (docs/gpu.md): no install step (the device reaches
# no registry); GPU_PARTS = the folder holding the carried parts (onnxruntime-gpu + wheels +
# tiny exports), unpacked and installed first. Writes gpu-check.json under $OUT.
GPU_PY ?= python3
GPU_PARTS ?=
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PY) -m benchmarks.gpu_carry run $(if $(GPU_PARTS),--parts "$(GPU_PARTS)") -- $(GPU_CHECK_ARGS)

# Overload soak on loopback: 2x measured capacity, valid + invalid mix, ~3 minutes, bounded.
SOAK_ARGS ?= --duration 150
soak: install-dev
	$(PY) -m benchmarks.soak $(SOAK_ARGS)

# Fuzz campaign on loopback: the malformed corpus + schemathesis against /openapi.json.
FUZZ_ARGS ?= --max-examples 100
fuzz: install-dev
	$(PY) -m tests.fuzz.run_fuzz $(FUZZ_ARGS)

# Container images and Kubernetes manifests (deploy/): render both overlays with kubectl
# kustomize, validate every object against the Kubernetes and CRD schemas, check the values
# that must agree with the server's settings, lint the Dockerfiles with hadolint. Offline; the
# same tests run in `make test`. Builds no image (docs/scaling.md, "Kubernetes").
deploy-check: install-dev
	$(PY) -m pytest -q tests/deploy

# A cluster on this machine: REPLICAS servers on loopback behind HAProxy (balancer on
# 127.0.0.1:CLUSTER_PORT), sharing PostgreSQL (a fresh schema, dropped at the end) and a
# SeaweedFS S3 bucket; prints how to use it, runs until Ctrl-C, then stops everything
# (docs/scaling.md, "The local cluster"). Needs haproxy (apt-get install -y haproxy). CLUSTER_ARGS: more
# launcher flags (--lease-seconds, --api-key, --models-dir, -- <server flags>).
REPLICAS ?= 3
CLUSTER_PORT ?= 8080
CLUSTER_ARGS ?=
cluster: install-dev
	$(PY) -m benchmarks.cluster --replicas $(REPLICAS) --port $(CLUSTER_PORT) $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
