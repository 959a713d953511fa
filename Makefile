# The two set-up commands of the README: `make demo` and `make test`.
# Both create or reuse a virtual environment and install what they need.
# TORCH_SPEC pins the CPU wheel that lies on this machine's disk; override it
# elsewhere, e.g. `make test TORCH_SPEC="torch==2.5.1"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmsolvers-installed

.PHONY: demo test lint bench setup

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[diffusers,bench,dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python benchmarks/demo.py

test: $(STAMP)
	$(BIN)/python -m ruff check lmsolvers adapters tests benchmarks notebooks docs
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/toy_convergence.py
	$(BIN)/python benchmarks/digits_bench.py
	$(BIN)/python benchmarks/overhead.py
