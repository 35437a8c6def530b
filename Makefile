# armodel-fast developer commands. Every target installs what it needs, so on a
# fresh machine one command (e.g. `make test`) is enough.
#
#   make install      venv + CPU torch + deps + editable build of the extensions
#   make test         fast tests (PYTEST_ARGS="-k nade -x" to pass options)
#   make test-all     all tests, slow ones included
#   make demo         train a small NADE on digits and draw samples
#   make bench        benchmarks
#   make cuda-check   compile every csrc/*.cu with nvcc (no GPU needed)
#   make clean        remove build outputs (keeps the venv and pip cache)

VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
NVCC ?= /usr/local/cuda/bin/nvcc
MAX_JOBS ?= 2
PYTEST_ARGS ?=
REQUIRE_NVCC ?= 0

export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export TRITON_CACHE_DIR := $(CURDIR)/.cache/triton
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions

TORCH_PIN = torch==2.13.0
DEPS = triton==3.8.0 numpy pybind11 ninja setuptools wheel \
       pytest pytest-benchmark hypothesis scikit-learn matplotlib rich

# Stamps live in the venv: deleting the venv resets them.
DEPS_STAMP = $(VENV)/.armodel-fast-deps
BUILD_STAMP = $(VENV)/.armodel-fast-build
# `csrc` itself is listed so that deleting a source file also triggers a rebuild.
BUILD_INPUTS = setup.py pyproject.toml csrc $(wildcard csrc/*)

CU_SRCS = $(wildcard csrc/*.cu)
CUDA_CHECK_DIR = build/cuda-check
CUDA_CHECK_FLAGS = -std=c++17 -O3 -Icsrc \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings

.PHONY: install test test-all demo bench cuda-check clean

install: $(BUILD_STAMP)

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(DEPS_STAMP): | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_PIN)
	$(PIP) install $(DEPS)
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	MAX_JOBS=$(MAX_JOBS) $(PIP) install --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) -m armodel_fast train --model nade --data digits --epochs 5 --backend auto --out runs/demo && \
	$(PY) -m armodel_fast sample --checkpoint runs/demo/model.pt --out samples.png

bench: install
	$(PY) -m armodel_fast bench

# The .cu files are torch-free by design, so nvcc alone compiles them.
cuda-check:
	@if [ ! -x "$(NVCC)" ]; then \
	    if [ "$(REQUIRE_NVCC)" = 1 ]; then echo "cuda-check: $(NVCC) not found (REQUIRE_NVCC=1)" >&2; exit 1; fi; \
	    echo "cuda-check: skipped, $(NVCC) not found (set NVCC=... or REQUIRE_NVCC=1 to fail)"; exit 0; \
	fi; \
	if [ -z "$(CU_SRCS)" ]; then echo "cuda-check: no .cu files yet"; exit 0; fi; \
	mkdir -p $(CUDA_CHECK_DIR); \
	for f in $(CU_SRCS); do \
	    echo "nvcc $$f"; \
	    $(NVCC) $(CUDA_CHECK_FLAGS) -c $$f -o $(CUDA_CHECK_DIR)/$$(basename $$f).o || exit 1; \
	done; \
	echo "cuda-check: $(words $(CU_SRCS)) file(s) compiled for sm_80 and sm_90"

clean:
	rm -rf build dist *.egg-info armodel_fast/*.so armodel_fast/_build_info.py \
	    .cache/triton .cache/torch_extensions .pytest_cache .benchmarks \
	    $(DEPS_STAMP) $(BUILD_STAMP)
