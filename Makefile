# The two commands a new user needs: `make serve` and `make test`. Everything else is optional.
#   make serve      the runtime install (OpenVINO and the AMX attention kernel included where
#                   they apply), then the server on HOST:PORT
#   make test       the whole suite, slow tests included; installs the dev extras and, as root,
#                   the Debian packages the tests drive (chromium, haproxy, PostgreSQL)
#   make test-fast  the same without the tests marked slow; make test-slow: only those
#   make lint       ruff check + ruff format --check (CI runs it before make test)
#   make lock       re-resolve deploy/constraints.txt after editing pyproject.toml or
#                   deploy/constraints.in (LOCK_ARGS=--upgrade moves every pin to the newest)
# Every install below takes its versions from deploy/constraints.txt: what a user installs is
# what the README measured. (Installing the package as a library keeps pyproject's ranges.)
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

.PHONY: serve test test-fast test-slow test-deps lock install install-dev lint export export-tiny benchmark gpu-check soak fuzz deploy-check cluster clean

# The lock: exact versions of everything the project's commands install, for every supported
# Python and platform (environment markers), made by `make lock`. -c applies it to what pip
# installs; --build-constraint to the isolated environment where pip builds the project
# (setuptools): since pip 26.2 (the lock has a later one) nothing else applies there, neither
# -c nor PIP_CONSTRAINT.
# A new venv's pip may predate --build-constraint (added in pip 25.3), so it is first brought
# to the locked pip (a wheel: nothing to build) with -c alone.
LOCK := deploy/constraints.txt
PIP_LOCKED := $(PY) -m pip install -q -c $(LOCK)
PIP_INSTALL := $(PIP_LOCKED) --build-constraint $(LOCK)

# Stamps: re-install only when pyproject.toml or the lock changes.
$(VENV)/.stamp-runtime: pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) pip
	$(PIP_INSTALL) -e .
	$(PY) -c 'from server.models.providers.fused_attention import main; main()'
	touch $@

# The real CLIP BPE vocabulary ships inside open-clip-torch; --no-deps keeps its torchvision
# requirement (which would fight the pinned CPU torch) out (deploy/uv.toml locks it the same
# way). Nothing imports open_clip itself.
# The dev extra brings the `playwright` package only: the browser tests drive Debian's
# /usr/bin/chromium (test-deps installs it), so no `playwright install` browser download.
$(VENV)/.stamp-dev: pyproject.toml $(LOCK) $(VENV)/.stamp-runtime
	$(PIP_INSTALL) -e '.[dev,bench]'
	$(PIP_INSTALL) --no-deps open-clip-torch
	touch $@

# Refresh the lock: pyproject.toml's runtime set and every extra, plus deploy/constraints.in,
# resolved for Python >= 3.10 on every platform (--universal), from PyPI only (no local
# find-links: the file must work on any machine). Needs only the venv's python and the
# locked uv, not an install of the project (whose pins may be what is being changed). Pins
# stay where pyproject still allows them; LOCK_ARGS=--upgrade (or --upgrade-package NAME)
# moves them.
LOCK_ARGS ?=
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP_LOCKED) uv
	$(VENV)/bin/uv pip compile pyproject.toml deploy/constraints.in \
		--config-file deploy/uv.toml --universal --python-version 3.10 \
		--extra export --extra dev --extra bench --extra gpu --extra tensorrt --extra openvino \
		--custom-compile-command 'make lock' --quiet $(LOCK_ARGS) -o $(LOCK)

install: $(VENV)/.stamp-runtime

install-dev: $(VENV)/.stamp-dev

serve: install
	INPAINT_HOST=$(HOST) INPAINT_PORT=$(PORT) $(PY) -m server $(SERVE_ARGS)

test: install-dev test-deps
	$(PY) -m pytest -q

test-fast: install-dev test-deps
	$(PY) -m pytest -q -m "not slow"

test-slow: install-dev test-deps
	$(PY) -m pytest -q -m slow

# Debian packages the tests drive, as package:file pairs: the browser tests
# (tests/e2e/test_playground.py: /usr/bin/chromium through playwright, no chromium-driver),
# the cluster (tests/e2e/test_cluster.py, benchmarks/cluster.py: haproxy) and the database
# tests (benchmarks/postgres.py: initdb and pg_ctl under /usr/lib/postgresql/*/bin). A package
# is there when its file is, or the file's name is on PATH. Checked on every run (no stamp:
# a few file tests); the missing ones are installed with one apt-get update when root, else
# named with the command to run, and their tests skip.
TEST_DEBS := chromium:/usr/bin/chromium haproxy:/usr/sbin/haproxy \
	postgresql:/usr/lib/postgresql/*/bin/pg_ctl
test-deps:
	@missing=; \
	for dep in $(TEST_DEBS); do \
		file=$${dep#*:}; \
		ls $$file >/dev/null 2>&1 || command -v $${file##*/} >/dev/null || missing="$$missing $${dep%%:*}"; \
	done; \
	[ -z "$$missing" ] && exit 0; \
	install="apt-get update && apt-get install -y$$missing"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make test: installing the Debian packages the tests need:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing && exit 0; \
		echo "*** make test: COULD NOT INSTALL$$missing; their tests will be SKIPPED ($$install) ***" >&2; \
	else \
		echo "*** make test: MISSING Debian packages:$$missing; their tests will be SKIPPED. Install them as root: $$install ***" >&2; \
	fi

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
