# Two commands do all the set-up on a fresh machine: `make quickstart` and `make test` each create the
# virtual environment when it is missing, installing torch first from the source chosen below, then the project.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RETINASCAN_REAL_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1
export RETINASCAN_REAL_DATA

# Which torch build to install (README, "Set-up"). TORCH_SPEC is the requirement; TORCH_INDEX_URL an extra
# package index searched for it. On a machine without an NVIDIA GPU (no nvidia-smi) the default is PyTorch's
# CPU index, whose `+cpu` builds win over PyPI's default CUDA build (several GB); with a GPU it is empty, and
# pip's own indexes decide (PyPI: the CUDA build). Examples: `make TORCH_INDEX_URL=` (pip's indexes only),
# `make TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128` (a given CUDA), `make TORCH_SPEC=torch==2.9.1`.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX_URL := https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,$(TORCH_CPU_INDEX_URL))

.PHONY: install quickstart test lint benchmark

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--retries 0 --extra-index-url $(TORCH_INDEX_URL))
	@# Asked for the CPU index but got a CUDA build (the index was unreachable)? Say so instead of going on.
	@if [ "$(TORCH_INDEX_URL)" = "$(TORCH_CPU_INDEX_URL)" ] && ! $(PY) -W ignore -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
		echo "make: the CPU build of torch was asked for ($(TORCH_CPU_INDEX_URL)) but a CUDA build was installed;" \
		     "remove $(VENV) and rerun when the index is reachable, or choose the build with TORCH_INDEX_URL (README, Set-up)." >&2; \
		exit 1; fi
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
