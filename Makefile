# Two entry points for a fresh machine: `make run` and `make test`. Both go through `make install`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build; a GPU user installs a CUDA build of torch into $(VENV) first (see README).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.agentrt-installed
# vllm-router (Rust, on PyPI) in a venv of its own: the fleet test puts `agentrt serve` workers behind it
ROUTER_VENV ?= .venv-router
ROUTER_SPEC ?= vllm-router==0.1.17
ROUTER_STAMP := $(ROUTER_VENV)/.router-installed
BFCL_SPECS := bfcl-eval==2026.3.23 tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 overrides==7.7.0

.PHONY: install run test bench clean

install: $(STAMP) $(ROUTER_STAMP)

$(ROUTER_STAMP): Makefile
	@test -x $(ROUTER_VENV)/bin/python || $(PYTHON) -m venv $(ROUTER_VENV)
	$(ROUTER_VENV)/bin/python -m pip install -q "$(ROUTER_SPEC)"
	@touch $(ROUTER_STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,clients]"
	@# bfcl-eval pins numpy 1.x and dozens of API SDKs; the BFCL runner needs only its data, tool classes and
	@# checker (plus mpmath, in dev), and its OpenAI handler only the tree-sitter parsers and overrides
	$(PY) -m pip install -q --no-deps $(BFCL_SPECS)
	@# the dashboard's browser test drives Debian's chromium (never `playwright install`: no browser downloads)
	@command -v chromium >/dev/null || { $$(command -v sudo) apt-get update -qq && $$(command -v sudo) apt-get install -y -qq chromium; }
	@touch $(STAMP)

# the main job: six agent programs explore this repository with shell tools under the product's agentrt
# preset; qwen2.5-coder-0.5b answered 5 of 6 right in about a minute here (SmolLM2-135M: 1), so it is
# the default; `make run MODEL=SmolLM2-135M-Instruct` (or a directory, .gguf, Org/Model) for another
run: MODEL ?= qwen2.5-coder-0.5b-instruct
run: install
	@mkdir -p artifacts
	$(PY) -m agentrt run examples/explore_repo.py --programs 6 --preset agentrt --model $(MODEL) --db artifacts/main.db

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m benchmarks.engine_speed --json bench.json

clean:
	rm -rf $(VENV) $(ROUTER_VENV) build *.egg-info .pytest_cache
