# Two commands do all set-up on a fresh machine:
#   make run    set up, train the demo preset on synthetic data, decode with the native beam search
#   make test   set up, run the test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.fastdecoder-installed
TORCH_CPU_VERSION ?= 2.13.0

.PHONY: setup run test bench gpu-check clean

setup: $(STAMP)

# Idempotent: re-runs only when the build inputs change. An already installed torch is kept; a machine
# without a GPU gets the CPU build of torch $(TORCH_CPU_VERSION), never a CUDA wheel.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.hpp csrc/words/*.cpp csrc/words/*.hpp)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q --upgrade pip setuptools wheel pybind11 numpy
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "setup: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PIP) install -q torch; \
	else \
	    $(PIP) install -q torch==$(TORCH_CPU_VERSION); \
	fi
	@$(PIP) install -q --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

run: setup
	$(VENV)/bin/fastdecoder train --config demo --out runs/demo --overwrite

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m pytest -q bench --benchmark-columns=min,median,mean,ops

# On a GPU machine with torch (CUDA) already importable: no set-up, no registry; builds the extension itself.
# The same as: python3 bench/gpu_check.py --out gpu_check_out   (--smoke: tiny sizes on a CPU)
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py --out gpu_check_out

clean:
	rm -rf build *.egg-info src/*.egg-info src/fastdecoder/*.so .pytest_cache .benchmarks
