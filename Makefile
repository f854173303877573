# The two entry points of detlib. Both set everything up from a fresh clone:
#   make train   train and evaluate Mask R-CNN on the built-in synthetic dataset
#   make test    run the test suite (DETLIB_REQUIRE_EXT=1: the compiled ops must load, no torchvision fallback)
#   make lint    ruff: lint rules and formatting, as configured in pyproject.toml (checks only)
#   make wheel-check  build the wheel and test it installed in a fresh virtualenv outside the source tree
# The virtualenv lives in .venv; the extension is rebuilt whenever csrc/ or setup.py changes.
# CUDA kernels are compiled whenever nvcc is present (FORCE_CUDA=1), even without a GPU.

VENV ?= .venv
PY := $(VENV)/bin/python
NVCC := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
FORCE_CUDA ?= $(if $(NVCC),1,0)
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)

.PHONY: train test setup lint wheel-check

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

# Needs the dependencies only, not the compiled extension. To fix what it reports:
#   $(PY) -m ruff check --fix . && $(PY) -m ruff format .
lint: $(VENV)/.deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

wheel-check: setup
	PY=$(PY) .ci/check_wheel
