# GRank on Triton. `make help` lists the targets; every variable is overridable:
#   make train PRESET=tiny SEED=1
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
DATASET ?= ml-1m
PRESET ?= default
VARIANT ?= grank
DEMO_PRESET ?= fast
SEED ?= 0
THREADS ?= 0
SETTINGS ?=
ARTIFACTS ?= artifacts
PYTEST_ARGS ?= -rs -q
# production: the current NGC release (26.09 = Triton 2.73); the embedded 2.51 server is for development
TRITON_IMAGE ?= nvcr.io/nvidia/tritonserver:26.09-py3
HOST ?= 127.0.0.1
# ML-1M runs live in ARTIFACTS/PRESET/VARIANT, other data sets' in ARTIFACTS/DATASET/PRESET/VARIANT
# (grank.report.run_dir); only the default ML-1M model is built into the committed repository
RUNS = $(if $(filter ml-1m,$(DATASET)),$(ARTIFACTS),$(ARTIFACTS)/$(DATASET))
CHECKPOINT ?= $(RUNS)/$(PRESET)/grank/best.pt
REPOSITORY ?= $(if $(filter ml-1m,$(DATASET)),model_repository,$(ARTIFACTS)/$(DATASET)/model_repository)
# your own files: `make demo DATASET=shop INTERACTIONS=events.csv [ITEMS_FILE=...] [USERS_FILE=...]`
INTERACTIONS ?=
ITEMS_FILE ?=
USERS_FILE ?=
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
CONCURRENCY ?= 1:4:1
RATES ?= 200:2000:200
QPS ?= 1000
P99_MS ?= 50
ITEMS ?= 1000000
# the item table in SHARDS MIPS models merged exactly; shard s pinned to GPU s mod GPUS (0: not pinned)
SHARDS ?= 1
GPUS ?= 0
GPU_MEMORY_GB ?= 80
STAMP := $(VENV)/.setup-stamp

.PHONY: help setup setup-gpu data train train-all evaluate demo test clean export repository \
	configs tensorrt serve serve-container deploy rollback selfcheck perf perf-tune perf-shards perf-swap perf-overload \
	plan bench bench-quick bench-gpu kubernetes

help: ## List the targets and their variables
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'
	@echo "Variables (override with make VAR=value): DATASET=$(DATASET) PRESET=$(PRESET) VARIANT=$(VARIANT) SEED=$(SEED)"
	@echo "  SETTINGS=$(SETTINGS) (extra config overrides of train-all/evaluate, e.g. SETTINGS='--set train.epochs=4')"
	@echo "  INTERACTIONS=$(INTERACTIONS) ITEMS_FILE=$(ITEMS_FILE) USERS_FILE=$(USERS_FILE) (build DATASET from your files)"
	@echo "  DEMO_PRESET=$(DEMO_PRESET) THREADS=$(THREADS) ARTIFACTS=$(ARTIFACTS) PY=$(PY)"
	@echo "  CHECKPOINT=$(CHECKPOINT) REPOSITORY=$(REPOSITORY)"
	@echo "  HOST=$(HOST) HTTP_PORT=$(HTTP_PORT) GRPC_PORT=$(GRPC_PORT) METRICS_PORT=$(METRICS_PORT) CONCURRENCY=$(CONCURRENCY)"
	@echo "  NEW_CHECKPOINT=$(NEW_CHECKPOINT) (make deploy); the management key comes from GRANK_ADMIN_KEY"
	@echo "  RATES=$(RATES) QPS=$(QPS) P99_MS=$(P99_MS) ITEMS=$(ITEMS) SHARDS=$(SHARDS) GPUS=$(GPUS) GPU_MEMORY_GB=$(GPU_MEMORY_GB)"
	@echo "  TRITON_IMAGE=$(TRITON_IMAGE)"

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

data: setup ## Build DATASET into the cache (artifacts/data): a built-in one, or yours from INTERACTIONS (+ ITEMS_FILE, USERS_FILE)
	$(if $(INTERACTIONS),$(PY) -m grank data --interactions $(INTERACTIONS) $(if $(ITEMS_FILE),--items $(ITEMS_FILE)) $(if $(USERS_FILE),--users $(USERS_FILE)) --name $(DATASET),$(PY) -m grank data --dataset $(DATASET))

train: setup ## Train one model (DATASET, PRESET=default|fast|tiny, VARIANT=grank|sasrec|...) into $(RUNS)/PRESET/VARIANT
	$(PY) -m grank train --dataset $(DATASET) --preset $(PRESET) --variant $(VARIANT) --seed $(SEED) --threads $(THREADS) --out $(RUNS)/$(PRESET)/$(VARIANT)

NEURAL_ROWS := grank generator_only generator_ranker_no_aux generator_aux sasrec
JOBS ?= 2

train-all: setup ## Train every neural results row, JOBS at a time with 1 thread each (resumes/skips finished ones)
	$(MAKE) --no-print-directory -j$(JOBS) $(addprefix train-row-,$(NEURAL_ROWS)) THREADS=1

train-row-%:
	@mkdir -p $(RUNS)
	$(PY) -m grank train --dataset $(DATASET) --preset $(PRESET) --variant $* --seed $(SEED) --threads $(THREADS) $(SETTINGS) --out $(RUNS)/$(PRESET)/$* > $(RUNS)/$(PRESET)-$*.log 2>&1 || (tail -5 $(RUNS)/$(PRESET)-$*.log; exit 1)

evaluate: train-all ## Train missing rows (train-all), evaluate every row; writes DATASET's section of docs/results.json and docs/RESULTS.md
	$(PY) -m grank results --dataset $(DATASET) --preset $(PRESET) --seed $(SEED) --artifacts $(ARTIFACTS) $(SETTINGS) \
	  --note "Rows trained $(JOBS) at a time (make train-all), one torch thread each: each training had one core of the machine."

demo: setup ## Everything on DATASET: (your files,) train (DEMO_PRESET, minutes), evaluate, export, serve on Triton, query gRPC+HTTP, perf sweep
	$(if $(INTERACTIONS),$(MAKE) --no-print-directory data)
	$(PY) -m grank demo --dataset $(DATASET) --preset $(DEMO_PRESET) --seed $(SEED) --artifacts $(ARTIFACTS)
	$(PY) -m serve.demo --checkpoint $(RUNS)/$(DEMO_PRESET)/grank/best.pt --repository $(REPOSITORY) \
	  --artifacts $(ARTIFACTS) --concurrency $(CONCURRENCY)

export: setup ## Export CHECKPOINT to ONNX (+ Polygraphy parity on real users) into $(ARTIFACTS)/export
	$(PY) -m export onnx --checkpoint $(CHECKPOINT) --out $(ARTIFACTS)/export

repository: setup ## Export CHECKPOINT and build the Triton model repository (REPOSITORY)
	$(PY) -m export repository --checkpoint $(CHECKPOINT) --out $(ARTIFACTS)/export --repository $(REPOSITORY) \
	  $(if $(filter-out 1,$(SHARDS)),--shards $(SHARDS) --gpus $(GPUS))

configs: setup ## Regenerate the committed config.pbtxt files from grank/signatures.py
	$(PY) -m export configs

tensorrt: setup ## GPU + TensorRT only: FP16 engines from CHECKPOINT, compared with ONNX Runtime
	$(PY) -m export tensorrt --checkpoint $(CHECKPOINT) --onnx-dir $(ARTIFACTS)/export --out $(ARTIFACTS)/tensorrt

serve: setup ## Run the embedded Triton 2.51 (development) on REPOSITORY until Ctrl-C, restarted if it crashes; binds HOST (loopback)
	$(PY) -m serve --repository $(REPOSITORY) --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) \
	  --metrics-port $(METRICS_PORT) --work-dir $(ARTIFACTS)/triton

serve-container: setup ## Production: REPOSITORY in the NGC container TRITON_IMAGE on a GPU; needs GRANK_ADMIN_KEY (Docker + NVIDIA runtime)
	@test -n "$$GRANK_ADMIN_KEY" || { echo "set GRANK_ADMIN_KEY (a management key, e.g. openssl rand -hex 24)"; exit 2; }
	docker run --rm --gpus all -e GRANK_ADMIN_KEY -p $(HTTP_PORT):8000 -p $(GRPC_PORT):8001 -p $(METRICS_PORT):8002 \
	  -v $(CURDIR)/$(REPOSITORY):/models:ro $(TRITON_IMAGE) bash -c "$$($(PY) -m serve.admin --container-command)"

KUBE_OUT ?= deploy/kubernetes
KUBE_SET ?=
kubernetes: setup ## Render + validate the Kubernetes manifests of TRITON_IMAGE into KUBE_OUT (KUBE_SET='--set repository.url=...'; docs/DEPLOYMENT.md)
	$(PY) -m serve.kubernetes --out $(KUBE_OUT) --set image=$(TRITON_IMAGE) $(KUBE_SET)

NEW_CHECKPOINT ?= $(CHECKPOINT)
deploy: setup ## Swap NEW_CHECKPOINT into the running server (REPOSITORY, HTTP_PORT) as a new version, atomically
	$(PY) -m serve.deploy --checkpoint $(NEW_CHECKPOINT) --repository $(REPOSITORY) --url localhost:$(HTTP_PORT) \
	  --work-dir $(ARTIFACTS)/deploy

rollback: setup ## Switch the running server back to the previous version on disk (REPOSITORY, HTTP_PORT)
	$(PY) -m serve.deploy --rollback --repository $(REPOSITORY) --url localhost:$(HTTP_PORT)

selfcheck: setup ## Compare a running server with the local PyTorch pipeline on 50 real users
	$(PY) -m serve.selfcheck --grpc-url localhost:$(GRPC_PORT) --http-url localhost:$(HTTP_PORT) --checkpoint $(CHECKPOINT)

perf: setup ## perf_analyzer concurrency sweep (CONCURRENCY) against a running server; CSV + plot in $(ARTIFACTS)/perf
	$(PY) -m perf sweep --url localhost:$(GRPC_PORT) --concurrency $(CONCURRENCY) --out $(ARTIFACTS)/perf

perf-tune: setup ## Serve each serving variant on its own Triton and sweep it with perf_analyzer; HTTP, open loop, k1/history shapes, 1M items -> docs/ (needs `make repository`; ~40 min)
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants all_threads \
	  all_threads_delay0 all_threads_delay1ms all_threads_delay4ms threads1 inst2_threads1 threads1_delay0 threads1_delay1ms
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants inst1 inst3
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants default --protocols grpc http
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants default --request-rate $(RATES)
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants default trained_shape k1_200 k1_1000 history128 history64
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants default mips_threads2 --items 1000000

perf-swap: setup ## A deploy + rollback of NEW_CHECKPOINT under load, every answer checked (own server on a copy of REPOSITORY)
	$(PY) -m perf swap --repository $(REPOSITORY) --checkpoint $(NEW_CHECKPOINT) --out $(ARTIFACTS)/perf/swap

perf-overload: setup ## Open-loop load far above capacity, with and without admission control (own servers)
	$(PY) -m perf overload --repository $(REPOSITORY) --out $(ARTIFACTS)/perf/overload

plan: setup ## Capacity planner from docs/performance.json: make plan QPS=2000 P99_MS=50 ITEMS=1000000 [GPUS=8 GPU_MEMORY_GB=80: shard placement]
	$(PY) -m perf plan --qps $(QPS) --p99-ms $(P99_MS) --items $(ITEMS) \
	  $(if $(filter-out 0,$(GPUS)),--gpus $(GPUS) --gpu-memory-gb $(GPU_MEMORY_GB))

perf-shards: setup ## The item table in 1, 2 and 4 shards at 1M and 5M items, each on its own Triton, swept with perf_analyzer -> docs/ (needs `make repository`; ~30 min)
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants shards1 shards2 shards4 --items 1000000
	$(PY) -m perf tune --checkpoint $(CHECKPOINT) --repository $(REPOSITORY) --variants shards1 shards2 shards4 --items 5000000

bench: setup ## MIPS stage vs FAISS flat/HNSW/IVF peers and the machine's floor (N to 5M; long) -> docs/
	$(PY) -m mipsbench cpu --checkpoint $(CHECKPOINT)
	$(PY) -m perf report

bench-quick: setup ## A few-minute smoke run of the MIPS benchmark (N up to 50k) into $(ARTIFACTS)/bench-quick
	$(PY) -m mipsbench cpu --checkpoint $(CHECKPOINT) --quick --docs $(ARTIFACTS)/bench-quick
	$(PY) -m perf report --docs $(ARTIFACTS)/bench-quick

bench-gpu: setup ## MIPS stage on a CUDA GPU (fp32/fp16/bf16, exact re-score, two-step top-k; N to 100M) -> docs/ (GPU machines only)
	$(PY) -m mipsbench vectors --checkpoint $(CHECKPOINT) --out $(ARTIFACTS)/vectors.npz
	$(PY) -m mipsbench gpu --vectors $(ARTIFACTS)/vectors.npz --out $(ARTIFACTS)/gpu-mips
	$(PY) -m mipsbench merge $(ARTIFACTS)/gpu-mips/gpu_mips.json
	$(PY) -m perf report

test: setup ## Run the test suite (CPU; GPU tests are skipped with the reason)
	$(PY) -m pytest $(PYTEST_ARGS) tests

clean: ## Remove build outputs (keeps .venv)
	rm -rf $(ARTIFACTS) .pytest_cache $(REPOSITORY)/*/[0-9]*
