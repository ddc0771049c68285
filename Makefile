# Two entry points for a fresh machine: `make run` and `make test`. Both go through `make install`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build; a GPU user installs a CUDA build of torch into $(VENV) first (see README).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.agentrt-installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: install
	@mkdir -p artifacts
	$(PY) -m agentrt run examples/explore_repo.py --programs 6 --db artifacts/main.db

test: install
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m engine.bench --json bench.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
