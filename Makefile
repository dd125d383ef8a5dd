# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test` each create the
# virtual environment when it is missing. torch is pinned to the CPU wheel first (2.13.0), so that
# resolving the project's `torch>=2.4` never pulls a multi-GB CUDA build.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
RETINASCAN_REAL_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export RETINASCAN_REAL_DATA

.PHONY: install quickstart test lint benchmark

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/retinascan quickstart

lint: install
	$(VENV)/bin/ruff check retinascan_hf scripts tests benchmarks
	$(VENV)/bin/ruff format --check retinascan_hf scripts tests benchmarks

test: install lint
	$(PY) -m pytest -q

benchmark: install
	$(PY) scripts/benchmark.py
