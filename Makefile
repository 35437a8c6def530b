# armodel-fast developer commands. Every target installs what it needs, so on a
# fresh machine one command (e.g. `make test`) is enough.
#
#   make install      venv + CPU torch + deps + editable build of the extensions
#   make test         fast tests (PYTEST_ARGS="-k nade -x" to pass options)
#   make test-all     all tests, slow ones included
#   make demo         train a small NADE on digits and draw samples
#   make bench        benchmarks
#   make cuda-check   compile every csrc/**/*.cu with nvcc (no GPU needed)
#   make wheel        CPU wheel (torch 2.13.0+cpu) in dist/cpu/
#   make wheel-cuda   wheel with the CUDA extension (torch 2.14.1+cu130 venv) in dist/cuda/
#   make test-wheels  install each wheel into a fresh venv of its torch and run the CPU tests
#                     (FREE_BUILD_VENV=1 drops .venv-cuda once the CUDA wheel is built, so
#                     that only one ~5.5 GB torch+cu130 venv is on disk at a time)
#   make test-torch   TORCH=2.11.0: fresh venv of that torch, build from source, CPU tests
#                     (the tested range is setup.py's TORCH_RANGE; the venv is ~5 GiB, deleted after)
#   make gpu-check-wheels  wheels (Python 3.12) of what benchmarks/gpu_check.sh needs on an offline GPU machine
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
# The ends of the tested torch range (setup.py's TORCH_RANGE): CI builds from source
# and runs the CPU tests with each (make test-torch; the CUDA wheel is on the newest).
TORCH_OLDEST = 2.11.0
TORCH_NEWEST = 2.14.1
DEPS = triton==3.8.0 numpy pybind11 ninja setuptools wheel \
       pytest pytest-benchmark hypothesis scikit-learn matplotlib rich
# The flow libraries armodel_fast.flows plugs into (tests/test_flows_*.py). --no-deps:
# each declares torch (already pinned) and nflows also tensorboard, which it does not need.
FLOW_DEPS = zuko==1.6.0 nflows==0.14 pyro-ppl==1.9.2 pyro-api==0.1.2 opt_einsum==3.4.0 tqdm==4.70.1

# Stamps live in the venv: deleting the venv resets them.
DEPS_STAMP = $(VENV)/.armodel-fast-deps
BUILD_STAMP = $(VENV)/.armodel-fast-build
# csrc's folders are listed so that deleting a source file also triggers a rebuild.
BUILD_INPUTS = setup.py pyproject.toml $(shell find csrc)

CU_SRCS = $(sort $(shell find csrc -name '*.cu'))
CUDA_CHECK_DIR = build/cuda-check
CUDA_CHECK_FLAGS = -std=c++17 -O3 -Icsrc \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Werror all-warnings

.PHONY: install test test-all demo bench cuda-check clean wheel wheel-cuda test-wheel test-wheel-cuda test-wheels \
        test-torch print-torch-range gpu-check-wheels

install: $(BUILD_STAMP)

$(PY):
	python3 -m venv $(VENV)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(DEPS_STAMP): | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_PIN)
	$(PIP) install $(DEPS)
	$(PIP) install --no-deps $(FLOW_DEPS)
	touch $@

$(BUILD_STAMP): $(DEPS_STAMP) $(BUILD_INPUTS)
	MAX_JOBS=$(MAX_JOBS) $(PIP) install --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

test-all: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) -m armodel_fast train --model nade --data digits --epochs 5 --backend auto --out runs/demo --overwrite && \
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

# ---- wheels ----------------------------------------------------------------
# Each wheel pins the torch it was built against (setup.py install_requires).
CUDA_VENV ?= .venv-cuda
CUDA_PY = $(CUDA_VENV)/bin/python
CUDA_TORCH_PIN = torch==$(TORCH_NEWEST)
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCHS ?= 8.0;9.0;10.0
BUILD_DEPS = numpy pybind11 ninja setuptools wheel
TEST_DEPS = pytest pytest-benchmark hypothesis scikit-learn matplotlib rich
FREE_BUILD_VENV ?= 0
# A venv of torch 2.14.1+cu130 and its nvidia-* wheels is ~5.5 GiB (measured);
# each target that makes one first checks that the disk has room for it.
CUDA_VENV_GIB = 6
define need_disk
@free=$$(df -Pk . | awk 'NR==2 {print int($$4 / 1048576)}'); \
	if [ "$$free" -lt $(1) ]; then \
	    echo "$(2): only $$free GiB free on $$(df -P . | awk 'NR==2 {print $$6}'), needs $(1) GiB" >&2; exit 1; \
	fi; echo "$(2): $$free GiB free on disk (needs $(1))"
endef

wheel: $(DEPS_STAMP)
	rm -rf dist/cpu
	MAX_JOBS=$(MAX_JOBS) $(PIP) wheel --no-build-isolation --no-deps -w dist/cpu .
	@ls -l dist/cpu

$(CUDA_PY):
	$(call need_disk,$(CUDA_VENV_GIB),$(CUDA_VENV))
	python3 -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install $(CUDA_TORCH_PIN) $(BUILD_DEPS)

wheel-cuda: | $(CUDA_PY)
	rm -rf dist/cuda
	CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" FORCE_CUDA=1 MAX_JOBS=$(MAX_JOBS) \
	    $(CUDA_PY) -m pip wheel --no-build-isolation --no-deps -w dist/cuda .
	@ls -l dist/cuda

# Fresh venv, the wheel's own torch, the wheel; then the CPU tests run against the
# installed package (from build/, so the source tree is not on sys.path). The venv
# is thrown away once the tests pass (it is made afresh on every run anyway).
define test_wheel
	rm -rf build/venv-$(1)
	$(call need_disk,$(4),build/venv-$(1))
	python3 -m venv build/venv-$(1)
	build/venv-$(1)/bin/pip install $(2) $(TEST_DEPS) triton==3.8.0
	build/venv-$(1)/bin/pip install --no-deps dist/$(1)/*.whl
	build/venv-$(1)/bin/pip check
	cd build && ./venv-$(1)/bin/python -c \
	    "import armodel_fast as af; print(af.__file__); [print(' ', s) for s in af.backends().values()]"
	cd build && ARMODEL_FAST_EXPECT_INSTALLED=1 ARMODEL_FAST_EXPECT_CUDA_EXT=$(3) ./venv-$(1)/bin/pytest -q -m "not slow" \
	    -c $(CURDIR)/pyproject.toml --rootdir $(CURDIR) $(PYTEST_ARGS) $(CURDIR)/tests
	rm -rf build/venv-$(1)
endef

test-wheel: wheel
	$(call test_wheel,cpu,$(TORCH_PIN),0,2)

test-wheel-cuda: wheel-cuda
	@if [ "$(FREE_BUILD_VENV)" = 1 ]; then echo "rm -rf $(CUDA_VENV) (FREE_BUILD_VENV=1)"; rm -rf $(CUDA_VENV); fi
	$(call test_wheel,cuda,$(CUDA_TORCH_PIN),1,$(CUDA_VENV_GIB))

test-wheels: test-wheel test-wheel-cuda

# ---- a range of torch versions (issue 15) --------------------------------
# A source build takes any torch in setup.py's TORCH_RANGE (>=2.11,<2.15); CI runs
# this at its oldest end (the newest, 2.14.1, is the CUDA wheel's torch above).
# Fresh venv with torch==$(TORCH) from PyPI (a CUDA build: its nvidia-* wheels make
# the venv ~5 GiB) and the Triton that torch pins (3.6.0 for 2.11.0); the package is
# built from a copy of the tree (its own build/ dir, so no object of another torch's
# build is reused) and installed, and the CPU tests run against the installed copy.
# With nvcc here the CUDA extension is built too (for TORCH_ARCHS only), as
# benchmarks/gpu_check.sh builds it on a GPU machine with that torch.
# Triton < 3.8's interpreter (how the CPU tests run Triton kernels) calls int() on
# 1-element arrays, an error since numpy 2.4 (Triton 3.8 squeezes them first), so
# with an older Triton the venv gets numpy < 2.4.
TORCH ?= $(TORCH_OLDEST)
TORCH_ARCHS ?= 9.0
TORCH_DIR = build/torch-$(TORCH)
TORCH_VENV_GIB = 6
TORCH_WITH_CUDA := $(shell [ -x "$(NVCC)" ] && echo 1 || echo 0)

print-torch-range:
	@echo $(TORCH_OLDEST) $(TORCH_NEWEST)

test-torch:
	rm -rf $(TORCH_DIR)
	$(call need_disk,$(TORCH_VENV_GIB),$(TORCH_DIR))
	python3 -m venv $(TORCH_DIR)/venv
	$(TORCH_DIR)/venv/bin/pip install torch==$(TORCH) $(BUILD_DEPS) $(TEST_DEPS)
	$(TORCH_DIR)/venv/bin/python -c "import sys, triton; \
	    sys.exit(tuple(int(p) for p in triton.__version__.split('.')[:2]) < (3, 8))" \
	    || $(TORCH_DIR)/venv/bin/pip install "numpy<2.4"
	mkdir -p $(TORCH_DIR)/src
	git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t $(TORCH_DIR)/src
	cd $(TORCH_DIR)/src && CUDA_HOME=$(CUDA_HOME) FORCE_CUDA=$(TORCH_WITH_CUDA) TORCH_CUDA_ARCH_LIST="$(TORCH_ARCHS)" \
	    MAX_JOBS=$(MAX_JOBS) ../venv/bin/pip install --no-build-isolation --no-deps .
	$(TORCH_DIR)/venv/bin/pip check
	cd $(TORCH_DIR) && ./venv/bin/python -c "import torch, triton, armodel_fast as af; \
	    print('torch', torch.__version__, 'triton', triton.__version__, 'armodel_fast', af.__file__); \
	    [print(' ', s) for s in af.backends().values()]"
	cd $(TORCH_DIR) && ARMODEL_FAST_EXPECT_INSTALLED=1 ARMODEL_FAST_EXPECT_CUDA_EXT=$(TORCH_WITH_CUDA) \
	    ./venv/bin/pytest -q -m "not slow" -p no:cacheprovider \
	    -c $(CURDIR)/pyproject.toml --rootdir $(CURDIR) $(PYTEST_ARGS) $(CURDIR)/tests
	rm -rf $(TORCH_DIR)

# ---- what benchmarks/gpu_check.sh needs on a GPU machine with no internet --
# Wheels of the test/bench packages for that machine's Python (3.12 on the H200s),
# for gpu_check.sh --wheels (it installs only those missing there). numpy is left
# out (every torch machine has it; 16 MB of the 64 MiB that may travel with the tree).
GPU_PY_VERSION ?= 3.12
GPU_WHEELS_DIR = gpu-check-wheels
GPU_WHEELS = pytest hypothesis rich matplotlib pytest-xdist
GPU_PLATFORMS = manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64

gpu-check-wheels:
	rm -rf $(GPU_WHEELS_DIR)
	python3 -m pip download -q --only-binary=:all: --python-version $(GPU_PY_VERSION) --implementation cp \
	    $(addprefix --platform ,$(GPU_PLATFORMS)) -d $(GPU_WHEELS_DIR) $(GPU_WHEELS)
	rm -f $(GPU_WHEELS_DIR)/numpy-*.whl
	@du -sh $(GPU_WHEELS_DIR); ls $(GPU_WHEELS_DIR)

clean:
	rm -rf build dist *.egg-info $(CUDA_VENV) armodel_fast/*.so armodel_fast/_build_info.py \
	    .cache/triton .cache/torch_extensions .pytest_cache .benchmarks \
	    $(DEPS_STAMP) $(BUILD_STAMP)
