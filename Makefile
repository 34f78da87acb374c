# The README's commands. Thin on purpose: logic lives in the package and in .ci/run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup system-deps tools image dev test render plan bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[all]"
	touch $@

dev: setup  ## the local data plane: simulator + gateway on loopback, no cluster, no GPU
	$(BIN)/inferplane dev

system-deps:  ## PostgreSQL server binaries and Go, only when missing
	scripts/install-system-deps

tools: setup system-deps  ## pinned cluster + node binaries, the Pulumi engine, vLLM's parser: built once, cached machine-wide
	$(BIN)/inferplane cluster tools
	$(BIN)/inferplane check-vllm-args --prepare

image: setup system-deps  ## the gateway image on a Debian base (mmdebstrap + podman, no registry), cached by key
	$(BIN)/inferplane cluster image

test: setup system-deps tools image  ## every test suite: unit, integration (real servers), cluster (real Kubernetes + Pulumi, a real node)
	INFERPLANE_REQUIRE_CLUSTER_TOOLS=1 $(BIN)/pytest

render: setup  ## the GitOps directory of the shipped Nemotron-Ultra example
	$(BIN)/inferplane render -f examples/nemotron-ultra.yaml -o rendered/nemotron-ultra

plan: setup
	$(BIN)/inferplane plan -f examples/nemotron-ultra.yaml

bench: setup  ## benchmarks: ratios measured side by side in one run
	scripts/install-system-deps --bench
	$(BIN)/python bench/render.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/gateway.py --sidecar-core

clean:
	rm -rf $(VENV) rendered .pytest_cache
