# efficientps: the README's commands. `make install` sets up everything in one command.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# An activated virtualenv (or conda env) is used as it is; otherwise .venv in the repo.
# VENV=/some/path make install picks any other place.
ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
VENV ?= $(if $(ACTIVE_ENV),$(ACTIVE_ENV),.venv)
# Absolute, because some recipes run from other directories.
override VENV := $(abspath $(VENV))
PYTHON_BOOTSTRAP ?= python3
# torch/torchvision pins live in this one file; point it elsewhere for another CUDA/CPU build.
TORCH_REQUIREMENTS ?= requirements/torch.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.efficientps-installed
INSTALL_INPUTS := setup.py $(TORCH_REQUIREMENTS) tools/install_detectron2.py \
	tools/detectron2_C_placeholder.py
# A DETECTRON2_SRC given on the command line always gets a look from the installer.
FORCE_D2 := $(if $(DETECTRON2_SRC),force-install,)
DEMO_DIR ?= output/demo
PYTEST_ARGS ?=

.PHONY: help install test test-fast test-gpu demo bench bench-gpu bench-learning lint format clean \
	force-install

help:
	@echo "make install   venv at $(VENV) with torch, detectron2 and efficientps (one command)"
	@echo "make demo      the main job on the embedded synthetic dataset (CPU)"
	@echo "make test      install if needed, then the whole test suite"
	@echo "make test-fast the suite without the child-process trainings (marker slow)"
	@echo "make test-gpu  the CUDA tests (marker cuda; each skips, saying so, without a GPU)"
	@echo "make bench     the benchmark scripts whose tables are in README"
	@echo "make bench-gpu the GPU rows: inference and a training step beside Panoptic FPN R50"
	@echo "make bench-learning  what the demo config learns on a held-out Cityscapes-format set"
	@echo "make lint      ruff + black --check"

install: $(STAMP)

force-install:

$(STAMP): $(INSTALL_INPUTS) $(FORCE_D2)
	@test -x $(PY) || { echo "creating virtualenv $(VENV)"; $(PYTHON_BOOTSTRAP) -m venv $(VENV); }
	$(PY) -m pip install --upgrade-strategy only-if-needed -r $(TORCH_REQUIREMENTS)
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install -e '.[dev]'
	cd /tmp && $(PY) -c "import detectron2, efficientps; print('efficientps ready:', efficientps.__file__)"
	@touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# On a GPU machine; EFFICIENTPS_GPU_REPORT=FILE collects the measured times and memory.
test-gpu: install
	$(PY) -m pytest -m cuda -rs $(PYTEST_ARGS)

demo: install
	$(PY) tools/run_demo.py --output $(DEMO_DIR)

# About 60 minutes on 2 cores; each script prints the table that README shows.
bench: install
	$(PY) benchmarks/backbone.py
	$(PY) benchmarks/model_flops.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/runtime_profile.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/pq_eval.py
	$(PY) benchmarks/pq_kernels.py
	$(PY) benchmarks/eval_overhead.py
	$(PY) benchmarks/tta_memory.py

# GPU rows of README's GPU section (about 15 minutes on one GPU).
bench-gpu: install
	$(PY) benchmarks/inference.py --device cuda --sizes 1024x2048 512x1024 --runs 5
	$(PY) benchmarks/train_step.py --device cuda --size 1024x2048 --runs 5

# The learning benchmark (README "Learning benchmark"): 3 seeds x about 12 minutes on 2 cores;
# then what bf16 and int8 cost on its seed-1 model (README "Deployment"; a few minutes).
bench-learning: install
	$(PY) benchmarks/learning.py --seeds 1 2 3
	$(PY) benchmarks/learning.py --fusion-table --seeds 1 2 3
	$(PY) benchmarks/precision.py

lint: install
	$(PY) -m ruff check .
	$(PY) -m black --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m black .

clean:
	rm -rf output build *.egg-info .pytest_cache
