# The two set-up commands of the README: `make demo` and `make test`.
# Both create or reuse a virtual environment and install what they need.
# TORCH_SPEC pins the CPU wheel that lies on this machine's disk; override it
# elsewhere, e.g. `make test TORCH_SPEC="torch==2.5.1"`.
# Scripts under benchmarks/ run as modules of the `benchmarks` package, from the
# checkout root (`python -m benchmarks.demo`), so none of them edits sys.path.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmsolvers-installed

.PHONY: demo test lint docs bench mutate setup

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[diffusers,bench,dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

setup: $(STAMP)

# Figures go to out/demo/ (git-ignored): the first command leaves a fresh clone clean.
demo: $(STAMP)
	$(BIN)/python -m benchmarks.demo

# The strict API-docs build and the notebooks run inside pytest (tests/test_api_docs.py,
# tests/test_notebooks.py), so `make test` is the whole of CI.
test: $(STAMP)
	$(BIN)/python -m ruff check lmsolvers adapters tests benchmarks notebooks docs tools
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check lmsolvers adapters tests benchmarks notebooks docs tools

# The API reference as HTML under out/docs/ (warnings are errors, as in the test).
docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs/api out/docs

# Regenerates the tracked tables and plots under benchmarks/results/ (about 6 hours on
# 2 cores: docs/benchmarks.md lists each benchmark with its time).
# One torch thread per process unless OMP_NUM_THREADS says otherwise (4–16x faster on a
# shared machine).
bench: export OMP_NUM_THREADS ?= 1
bench: $(STAMP)
	$(BIN)/python -m benchmarks.toy_convergence
	$(BIN)/python -m benchmarks.digits_bench
	$(BIN)/python -m benchmarks.flow_bench
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.guidance_roundtrip
	$(BIN)/python -m benchmarks.editing_bench
	$(BIN)/python -m benchmarks.reversal_memory
	$(BIN)/python -m benchmarks.adapters_roundtrip
	$(BIN)/python -m benchmarks.jobs_throughput
	$(BIN)/python -m benchmarks.kdiffusion_bench
	$(BIN)/python -m benchmarks.stochastic_toy
	$(BIN)/python -m benchmarks.stochastic_digits
	$(BIN)/python -m benchmarks.edit_friendly
	$(BIN)/python -m benchmarks.exponential_bench --model toy
	$(BIN)/python -m benchmarks.exponential_bench --model ddpm --phase val --n-val 512
	$(BIN)/python -m benchmarks.exponential_bench --model ddpm --phase latent
	$(BIN)/python -m benchmarks.exponential_bench --model ddpm --phase test
	$(BIN)/python -m benchmarks.exponential_bench --model ddpm --phase between
	$(BIN)/python -m benchmarks.exponential_bench --model ddpm --phase landing --n-val 512
	$(BIN)/python -m benchmarks.exponential_bench --model flow --phase val
	$(BIN)/python -m benchmarks.exponential_bench --model flow --phase latent
	$(BIN)/python -m benchmarks.exponential_bench --model flow --phase test
	$(BIN)/python -m benchmarks.exponential_bench --model cond --phase val --no-candidates
	$(BIN)/python -m benchmarks.exponential_bench --model cond --phase test
	$(BIN)/python -m benchmarks.network_precision

# Targeted mutation testing (tools/README.md): kill rate and survivors (~20 min).
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py
