# Two commands do all set-up on a fresh machine:
#   make run    set up, train the demo preset on synthetic data, decode with the native beam search
#   make test   set up, run the test suite
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.fastdecoder-installed
TORCH_CPU_VERSION ?= 2.13.0
# The exact versions `make test` passed with (every package of the venv); `make constraints` refreshes it.
CONSTRAINTS := constraints.txt

.PHONY: setup run test fuzz bench gpu-check clean test-latest constraints

setup: $(STAMP)

# Idempotent: re-runs only when the build inputs or the constraints change. Every package is installed at the
# version in constraints.txt (the tested set). An already installed torch is kept; a machine without a GPU gets
# the CPU build of torch $(TORCH_CPU_VERSION), never a CUDA wheel.
$(STAMP): pyproject.toml setup.py $(CONSTRAINTS) $(wildcard csrc/*.cpp csrc/*.hpp csrc/words/*.cpp csrc/words/*.hpp)
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PIP) install -q -c $(CONSTRAINTS) --upgrade pip setuptools wheel pybind11 numpy
	@if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "setup: keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	    $(PIP) install -q torch; \
	else \
	    $(PIP) install -q torch==$(TORCH_CPU_VERSION); \
	fi
	@$(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e ".[dev]"
	@touch $(STAMP)

# The newest releases of everything (no constraints) in a separate venv, the package installed from a wheel built
# with the newest build tools, then the test suite. torch stays at the CPU build $(TORCH_CPU_VERSION): the registry's
# newer Linux wheels of torch are CUDA builds of several GB, which a CPU machine must not pull.
LATEST_VENV := .venv-latest
LATEST_PY   := $(LATEST_VENV)/bin/python
test-latest:
	rm -rf $(LATEST_VENV)
	python3 -m venv $(LATEST_VENV)
	$(LATEST_PY) -m pip install -q --upgrade pip setuptools wheel pybind11
	echo "torch==$(TORCH_CPU_VERSION)" > $(LATEST_VENV)/torch-cpu.txt
	$(LATEST_PY) -m pip install -q -c $(LATEST_VENV)/torch-cpu.txt torch==$(TORCH_CPU_VERSION)
	$(LATEST_PY) -m pip install -q -c $(LATEST_VENV)/torch-cpu.txt --upgrade --upgrade-strategy eager ".[dev]"
	$(LATEST_PY) -m pip freeze --all --exclude fastdecoder > $(LATEST_VENV)/freeze.txt
	@$(LATEST_PY) -c "import torch, numpy, triton, transformers; print('test-latest: torch', torch.__version__, \
	    '| triton', triton.__version__, '| numpy', numpy.__version__, '| transformers', transformers.__version__)"
	$(LATEST_PY) -m pytest -q tests

# Refresh the tested set: the newest releases, and when their test run passes, their versions become constraints.txt.
constraints: test-latest
	sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' $(LATEST_VENV)/freeze.txt > $(CONSTRAINTS)
	@echo "constraints: $(CONSTRAINTS) now holds the versions test-latest passed with; commit it"

run: setup
	$(VENV)/bin/fastdecoder train --config demo --out runs/demo --overwrite

test: setup
	$(PY) -m pytest -q tests

# Sanitizer fuzzing (on 2 cores: about 5 minutes to build, 2 to run): the extensions built with ASAN + UBSAN into build/fuzz/ (the normal
# build is untouched), then hypothesis drives the Python API of the native decoders against the oracles of tests/.
# CPython itself is not instrumented: libasan is preloaded; leaks are not checked (the interpreter never frees
# everything); any other sanitizer report aborts the run (non-zero exit; -s: pytest must not capture the report).
FUZZ_DIR     := build/fuzz
SANITIZE     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
FUZZ_ENV     := LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
                ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:alloc_dealloc_mismatch=0:detect_odr_violation=0 \
                UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONMALLOC=malloc
FUZZ_EXAMPLES ?= 1500

# Rebuilt (forced: setuptools does not track headers) whenever a native source, setup.py or these flags change.
# C++ sources take CXXFLAGS (setuptools >= 72 compiles them with the C++ compiler's flags; CFLAGS reach only C
# sources), so both are set; fuzz/conftest.py refuses extensions without the sanitizers' instrumentation.
$(FUZZ_DIR)/.built: setup.py Makefile $(wildcard csrc/*.cpp csrc/*.hpp csrc/words/*.cpp csrc/words/*.hpp)
	CFLAGS="$(SANITIZE)" CXXFLAGS="$(SANITIZE)" LDFLAGS="$(SANITIZE)" $(PY) setup.py -q build_ext --force --parallel 2 \
	    --build-lib $(FUZZ_DIR) --build-temp $(FUZZ_DIR)/tmp
	@touch $@

fuzz: setup $(FUZZ_DIR)/.built
	$(FUZZ_ENV) FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s -p no:cacheprovider fuzz

bench: setup
	$(PY) -m pytest -q bench --benchmark-columns=min,median,mean,ops

# On a GPU machine with torch (CUDA) already importable: no set-up, no registry; builds the extension itself.
# The same as: python3 bench/gpu_check.py --out gpu_check_out   (--smoke: tiny sizes on a CPU)
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py --out gpu_check_out

clean:
	rm -rf build *.egg-info src/*.egg-info src/fastdecoder/*.so .pytest_cache .benchmarks $(LATEST_VENV)
