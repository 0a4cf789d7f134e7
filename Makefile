# llmctl: `make up` brings the system up on embedded defaults, `make test` runs the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= smollm2-135m

.PHONY: install up test lint bench gpu-check proto clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned first: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Control plane + one local agent + the demo model deployed as $(MODEL); prints the gateway URL, an API key
# and the admin token. `llmctl up --detach` / `llmctl down` for the background variant.
up: install
	$(BIN)/llmctl up --model $(MODEL) --gateway-host $(HOST) --gateway-port $(PORT)

test: install
	$(BIN)/llmctl models pull $(MODEL)
	$(BIN)/python -m pytest -q -ra

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/llmctl models pull $(MODEL)
	$(BIN)/llmctl bench --model $(MODEL) --requests 64 --input-len 32:512 --output-len 16:256 --seed 0 \
		--dtype bfloat16 --baselines hf-sequential,hf-static --json bench.json

# On a GPU box with torch + triton installed (no venv needed): kernel tests compiled, kernel and engine
# benchmarks; results under $$OUT (default ./gpu_out). See benchmarks/gpu_check.sh.
gpu-check:
	bash benchmarks/gpu_check.sh

# Regenerate the gRPC stubs from controlplane/proto/llmctl.proto (committed; a test checks they match).
proto: install
	PATH=$(CURDIR)/$(BIN):$$PATH bash scripts/gen_proto.sh

clean:
	rm -rf $(VENV) build *.egg-info
