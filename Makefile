# `make demo` and `make test` each build the virtual environment they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
TORCH_ARGS ?=  # e.g. --index-url https://download.pytorch.org/whl/cpu for the CPU wheel from PyPI's CUDA default

.PHONY: venv demo test test-lowest lint bench gpu-deps clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_ARGS) $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[test,lint]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/pladis demo --out demo.png

lint: venv
	$(VENV)/bin/ruff format --check src tests benchmarks scripts
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest

test-lowest:  # the demo tests under the lowest transformers pyproject allows, in .venv-lowest
	PYTHON=$(PYTHON) TORCH_PIN=$(TORCH_PIN) TORCH_ARGS="$(TORCH_ARGS)" scripts/ci_lowest_transformers.sh

bench: venv
	$(PY) benchmarks/bench_entmax.py
	$(PY) benchmarks/bench_pipeline.py

gpu-deps:  # diffusers for a lent GPU machine, whose image has torch and transformers (scripts/gpu_train_demo.sh)
	$(PYTHON) -m pip install -q --no-compile --no-deps --target .gpu diffusers==0.42.1

clean:
	rm -rf $(VENV) .venv-lowest .gpu
