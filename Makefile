# GRank on Triton. `make help` lists the targets; every variable is overridable:
#   make train PRESET=tiny SEED=1
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
PRESET ?= default
VARIANT ?= grank
DEMO_PRESET ?= fast
SEED ?= 0
THREADS ?= 0
ARTIFACTS ?= artifacts
PYTEST_ARGS ?= -rs -q
TRITON_IMAGE ?= nvcr.io/nvidia/tritonserver:24.10-py3
STAMP := $(VENV)/.setup-stamp

.PHONY: help setup setup-gpu data train train-all evaluate demo test clean

help: ## List the targets and their variables
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'
	@echo "Variables (override with make VAR=value): PRESET=$(PRESET) VARIANT=$(VARIANT) SEED=$(SEED)"
	@echo "  DEMO_PRESET=$(DEMO_PRESET) THREADS=$(THREADS) ARTIFACTS=$(ARTIFACTS) PY=$(PY)"

setup: $(STAMP) ## Create .venv with every pinned dependency (idempotent)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@# perf_analyzer (from tritonclient 2.50) needs Debian's libb64; install it only when missing.
	@if ! ldconfig -p | grep -q 'libb64.so.0d'; then \
	  echo "installing Debian package libb64-0d"; \
	  (apt-get update -qq && apt-get install -y -qq libb64-0d) || echo "WARNING: could not install libb64-0d (perf_analyzer will not run)"; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "import numpy, torch, onnx, onnxruntime, tritonclient.grpc, tqdm, matplotlib; assert numpy.__version__ < '2'"
	touch $@

setup-gpu: setup ## Optional: TensorRT 10.x for GPU machines (several GB)
	$(PY) -m pip install -q -r requirements-gpu.txt

data: setup ## Preprocess MovieLens-1M into the cache (artifacts/data)
	$(PY) -m grank data --dataset ml-1m

train: setup ## Train one model (PRESET=default|fast|tiny, VARIANT=grank|sasrec|...) into $(ARTIFACTS)/PRESET/VARIANT
	$(PY) -m grank train --preset $(PRESET) --variant $(VARIANT) --seed $(SEED) --threads $(THREADS) --out $(ARTIFACTS)/$(PRESET)/$(VARIANT)

NEURAL_ROWS := grank generator_only generator_ranker_no_aux generator_aux sasrec
JOBS ?= 2

train-all: setup ## Train every neural results row, JOBS at a time with 1 thread each (resumes/skips finished ones)
	$(MAKE) --no-print-directory -j$(JOBS) $(addprefix train-row-,$(NEURAL_ROWS)) THREADS=1

train-row-%:
	@mkdir -p $(ARTIFACTS)
	$(PY) -m grank train --preset $(PRESET) --variant $* --seed $(SEED) --threads $(THREADS) --out $(ARTIFACTS)/$(PRESET)/$* > $(ARTIFACTS)/$(PRESET)-$*.log 2>&1 || (tail -5 $(ARTIFACTS)/$(PRESET)-$*.log; exit 1)

evaluate: train-all ## Train missing rows (train-all), evaluate every row; writes docs/results.json and docs/RESULTS.md
	$(PY) -m grank results --preset $(PRESET) --seed $(SEED) --artifacts $(ARTIFACTS) \
	  --note "Rows trained $(JOBS) at a time (make train-all), one torch thread each: each training had one core of the machine."

demo: setup ## Set up, train GRank on the demo preset (minutes), evaluate it, print the table
	$(PY) -m grank demo --preset $(DEMO_PRESET) --seed $(SEED) --artifacts $(ARTIFACTS)

test: setup ## Run the test suite (CPU; GPU tests are skipped with the reason)
	$(PY) -m pytest $(PYTEST_ARGS) tests

clean: ## Remove build outputs (keeps .venv)
	rm -rf $(ARTIFACTS) .pytest_cache
