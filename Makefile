# `make demo` and `make test` each create (or refresh, when pyproject.toml changed) the virtualenv.
# TORCH is installed first so that the project's torch range accepts it; on a GPU machine use e.g.
#   make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: setup demo test bench clean FORCE

setup: $(VENV)/.installed

# The TORCH a virtualenv was made with, written once it is installed. Another TORCH given (a CUDA build
# after the CPU one) takes torch out first, since pip keeps an installed torch of the same version;
# without TORCH, torch stays. The recipes read it from the environment: it may hold quotes.
export TORCH
$(VENV)/.torch: FORCE
	@if [ ! -f $@ ]; then \
		mkdir -p $(VENV) && printf '%s\n' "$$TORCH" > $@ && \
		if [ -f $(VENV)/.installed ]; then touch -r $(VENV)/.installed $@; fi; \
	elif [ '$(origin TORCH)' != file ] && [ "$$(cat $@)" != "$$TORCH" ]; then \
		if [ -x $(BIN)/python ]; then $(BIN)/python -m pip uninstall --quiet -y torch; fi; \
		: > $@; \
	fi

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@printf '%s\n' "$$TORCH" > $(VENV)/.torch
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
