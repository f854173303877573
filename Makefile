# The two entry points of detlib. Both set everything up from a fresh clone:
#   make train   train and evaluate Mask R-CNN on the built-in synthetic dataset
#   make test    run the test suite (DETLIB_REQUIRE_EXT=1: the compiled ops must load, no torchvision fallback)
#   make test-isa  the acceleration, operator and Detectron2-differential tests again on a second family of CPU kernels
#   make lint    ruff: lint rules and formatting, as configured in pyproject.toml (checks only)
#   make wheel-check  build the wheel and test it installed in a fresh virtualenv outside the source tree
#   make wheel   a distributable wheel in dist/: CUDA code for every GPU architecture the installed torch supports
# The virtualenv lives in .venv; the extension is rebuilt whenever csrc/ or setup.py changes.
# CUDA kernels are compiled whenever nvcc is present (FORCE_CUDA=1), even without a GPU.

VENV ?= .venv
PY := $(VENV)/bin/python
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
FORCE_CUDA ?= $(if $(NVCC),1,0)
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: train test test-isa setup lint wheel wheel-check

setup: $(VENV)/.built

$(VENV)/.deps: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py $(CSRC)
	FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

train: setup
	$(PY) tools/train_net.py --config-file configs/Shapes/mask_rcnn_shapes.yaml $(ARGS)

test: setup
	DETLIB_REQUIRE_EXT=1 $(PY) -m pytest $(PYTEST_ARGS)

# Float results differ in their last bits, and bfloat16 in its speed and rounding, with the kernels a CPU gets:
# oneDNN (convolutions, matrix products, bfloat16) and ATen's vectorized loops (reductions, elementwise) each pick
# the best ISA the CPU has. A tolerance tuned on one machine then fails on another. test-isa caps both one family
# below this CPU's best, so CI sees a second family: on an AVX-512 CPU (with or without AVX-512 BF16 / AMX) AVX2,
# which changes the float32 convolutions' blocking (16 -> 8 lanes) and makes bfloat16 emulated (AVX512_CORE
# would leave float32 unchanged on AVX-512 machines); on an AVX2-only CPU SSE4.1 and ATen's scalar DEFAULT
# (capping at AVX2 there would change nothing). The tests name the kernels in use when they fail.
SECOND_ISA := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null \
	&& echo ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
	|| echo ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default)
ISA_TESTS ?= tests/modeling/test_acceleration.py tests/layers tests/differential/test_mask_rcnn.py \
	tests/differential/test_retinanet_default.py

test-isa: setup
	$(SECOND_ISA) $(PY) -m detlib.collect_env | grep "CPU kernels"
	$(SECOND_ISA) DETLIB_REQUIRE_EXT=1 $(PY) -m pytest -q $(ISA_TESTS) $(PYTEST_ARGS)

# Needs the dependencies only, not the compiled extension. To fix what it reports:
#   $(PY) -m ruff check --fix . && $(PY) -m ruff format .
lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# `make setup` compiles the CUDA kernels for one architecture (the visible GPU's, or 9.0), which keeps local builds
# quick. A wheel for other machines carries machine code for every architecture of the installed torch
# (torch.cuda.get_arch_list()) and PTX for the newest, which the driver compiles for GPUs newer than all of them:
# about one compile of csrc/*.cu per architecture. `python -m detlib.collect_env` lists what a build carries.
wheel: $(VENV)/.deps
	DETLIB_ALL_CUDA_ARCHS=$(FORCE_CUDA) FORCE_CUDA=$(FORCE_CUDA) MAX_JOBS=$${MAX_JOBS:-2} \
		$(PY) -m pip wheel --no-deps --no-build-isolation --wheel-dir dist .

wheel-check: setup
	PY=$(PY) .ci/check_wheel
