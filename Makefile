# `make demo` and `make test` each create (or refresh, when pyproject.toml changed) the virtualenv.
# TORCH is installed first so that the project's torch range accepts it; on a GPU machine use e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/gahb-scale run studies/smoke.yaml

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/jacobian_benchmark.py
	$(BIN)/python benchmarks/sampler_benchmark.py

clean:
	rm -rf $(VENV) results
