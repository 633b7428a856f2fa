# Two commands matter: `make up` (set up and start the stack) and `make test` (set up and test).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PEERS_VENV := .venv-peers
PY_DIRS := serving gateway drift operations quality retraining benchmarks containers scripts models tests
export YOLO_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

VERSION ?= 1.0
USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 2m

# The models `make up` serves, each with its weights, gate set, drift reference (images the generator renders
# from a seed of its own, as the line would show them) and packaging options; /predict serves the first.
MODELS := yolo parts
WEIGHTS_yolo = models/weights/v$(VERSION)/best.pt
GATE_yolo = samples
REFERENCE_yolo = var/reference/defects-s9001
WEIGHTS_parts = models/weights/tasks/classify/best.pt
GATE_parts = samples/gates/classify
REFERENCE_parts = var/reference/parts-s9001
OPTIONS_parts = --workers 1
MODEL ?= yolo
WEIGHTS ?= $(WEIGHTS_$(MODEL))
GATE_DATA ?= $(GATE_$(MODEL))
REFERENCE ?= $(REFERENCE_$(MODEL))
# Our own references are generated on first use; a REFERENCE of your own is a folder of your images.
OWN_REFERENCE = $(if $(filter var/reference/%,$(REFERENCE)),$(REFERENCE)/manifest.json)
PACKAGE = bash scripts/package_mar.sh --name $(MODEL) --weights $(WEIGHTS) --version $(VERSION) \
	--gate-data $(GATE_DATA) $(if $(REFERENCE),--reference $(REFERENCE)) $(OPTIONS_$(MODEL))
ARCHIVE = serving/model-store/$(MODEL)_v$(VERSION).mar

.PHONY: help venv archive model-archive package up down status logs test test-fast test-lane lint compose-up compose-down compose-test
.PHONY: redeploy rollback canary promote history loadtest bench bench-models report soak drift-bench
.PHONY: retrain ct-demo mlflow-ui capture-bench cache-bench swarm-up swarm-down swarm-test

# VERSION only when the operator set it (the default above is for `make up`)
GIVEN_VERSION = $(if $(filter-out file default undefined,$(origin VERSION)),$(VERSION))
NEED_VERSION = @test -n "$(GIVEN_VERSION)" || { echo "error: say which version: make $@ VERSION=2.0" >&2; exit 1; }

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## Create .venv with the pinned requirements

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

archive: venv ## Build each model's v$(VERSION) archive if missing; point its cold start at it if nothing is deployed
	@$(foreach m,$(MODELS),$(MAKE) --no-print-directory model-archive MODEL=$(m) && ) true

model-archive: $(OWN_REFERENCE)
	@test -f $(ARCHIVE) || $(PACKAGE)
	@test -L serving/model-store/$(MODEL)_current.mar || $(PY) -m scripts.stack set-current $(VERSION) --model $(MODEL)

package: venv $(OWN_REFERENCE) ## Package MODEL's WEIGHTS as VERSION, gated on GATE_DATA, with REFERENCE's drift reference (FORCE=1 to rebuild a version)
	$(PACKAGE) $(if $(FORCE),--force)

# Drift references of our own models: 2,400 generated images each (the generator is deterministic per seed).
var/reference/defects-s9001/manifest.json: | $(VENV)/.installed
	$(PY) -m models.generate_dataset --seed 9001 --train 0 --val 0 --test 2400 --jobs 2 --out var/reference/defects-s9001

var/reference/parts-s9001/manifest.json: | $(VENV)/.installed
	$(PY) -m models.generate_tasks --task classify --seed 9001 --train 0 --val 0 --test 2400 --out var/reference/parts-s9001

drift-bench: venv var/reference/defects-s9001/manifest.json ## False-alarm rate (observed vs predicted ERT) and detection delays of the drift detectors on v2.0 (reports/drift_bench.md)
	$(PY) -m scripts.drift_bench

retrain: venv ## Fine-tune MODEL on its labelled captures (var/labels/MODEL), gate, canary and promote it (EPOCHS, DATASET)
	$(PY) -m scripts.retrain run --model $(MODEL) $(if $(DATASET),--dataset $(DATASET)) $(if $(EPOCHS),--epochs $(EPOCHS))

ct-demo: venv var/reference/defects-s9001/manifest.json ## Defocus -> drift alarm -> captures -> labels -> fine-tune -> canary -> promote, on a private stack (reports/ct_demo.md)
	$(PY) -m scripts.ct_demo

capture-bench: venv ## The p50 latency capturing every answer adds, two gateways side by side (reports/capture_bench.md)
	$(PY) -m scripts.capture_bench

cache-bench: venv ## Answer cache off, memory and Redis side by side on a stream with repeats: hit rate, latency (reports/answer_cache.md)
	$(PY) -m scripts.answer_cache_bench

# MLflow's UI needs the full mlflow (about 850 MB), so it has a venv of its own; the runs are var/mlflow/mlflow.db
MLFLOW_VENV := .venv-mlflow
$(MLFLOW_VENV)/.installed:
	@test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --disable-pip-version-check mlflow==3.17.2
	@touch $@

mlflow-ui: $(MLFLOW_VENV)/.installed ## Show every retraining's MLflow run on http://127.0.0.1:5000 (PORT=...)
	@mkdir -p var/mlflow
	$(MLFLOW_VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/var/mlflow/mlflow.db --host 127.0.0.1 --port $(or $(PORT),5000)

up: archive ## Set everything up and start TorchServe + gateway (idempotent)
	$(PY) -m scripts.stack up

down: ## Stop the gateway and TorchServe
	@if [ -x $(PY) ]; then $(PY) -m scripts.stack down; else echo "nothing to stop (no .venv)"; fi

status: venv ## Show processes, deployed version and readiness
	$(PY) -m scripts.stack status

logs: venv ## Tail the stack's logs
	$(PY) -m scripts.stack logs

lint: venv ## Static checks
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)

test: venv lint ## Set everything up, lint, and run every test in lanes (tests/lanes.py): fast first, then the rest two at a time
	bash scripts/ensure_packages.sh
	$(PY) -m tests.lanes $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

test-fast: venv ## The edit-test loop: every test that starts no server, builds no archive and trains nothing
	$(PY) -m tests.lanes fast $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

test-lane: venv ## One lane of `make test` (LANE=fast|training|packaging|stack|calibration|containers), PYTEST_ARGS for pytest
	@test -n "$(LANE)" || { echo "error: say which lane: make test-lane LANE=stack (fast, training, packaging, stack, calibration, containers)" >&2; exit 1; }
	$(PY) -m tests.lanes $(LANE) $(if $(PYTEST_ARGS),-- $(PYTEST_ARGS))

redeploy: venv $(OWN_REFERENCE) ## Package MODEL's WEIGHTS as VERSION (unless packaged) and deploy it with no downtime
	$(NEED_VERSION)
	@test -f $(ARCHIVE) || $(PACKAGE)
	bash scripts/deploy.sh --model $(MODEL) $(VERSION)

rollback: venv ## Abort MODEL's canary, or go back to its previous version (or VERSION=...)
	bash scripts/rollback.sh --model $(MODEL) $(GIVEN_VERSION)

canary: venv $(OWN_REFERENCE) ## Package (unless packaged) and canary MODEL's VERSION on PERCENT % of its unpinned traffic
	$(NEED_VERSION)
	@test -n "$(PERCENT)" || { echo "error: say how much traffic: make canary VERSION=$(VERSION) PERCENT=20" >&2; exit 1; }
	@test -f $(ARCHIVE) || $(PACKAGE)
	bash scripts/deploy.sh --model $(MODEL) $(VERSION) --canary $(PERCENT)

promote: venv ## Make MODEL's running canary VERSION its default
	$(NEED_VERSION)
	bash scripts/deploy.sh --model $(MODEL) $(VERSION) --promote

history: venv ## Print MODEL's deploy history (who, when, version, sha256, result)
	$(PY) -m scripts.deploy history --model $(MODEL)

loadtest: venv ## Locust against the running stack (USERS, SPAWN_RATE, DURATION) into reports/; non-zero on any failure
	$(PY) -m scripts.loadtest --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION)

soak: venv ## Long run (DURATION=30m) of good, hostile and slow traffic on a private stack; memory and fds (reports/soak.md)
	$(PY) -m scripts.soak --duration $(if $(filter command line environment,$(origin DURATION)),$(DURATION),30m)

bench: venv $(PEERS_VENV)/.installed ## Ours vs in-process, TorchServe direct and the peers (FastAPI, LitServe), default vs baseline (reports/bench.md); SWEEP=1 for the grid (CONFIGS=a,b for part of it)
	$(PY) -m scripts.bench $(if $(SWEEP),--sweep) $(if $(CONFIGS),--configs $(CONFIGS))

# The peers' venv (benchmarks/peers.py): sees .venv's site-packages through a .pth file, adds LitServe and uvicorn[standard]
$(PEERS_VENV)/.installed: requirements-peers.txt $(VENV)/.installed
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PY) -c 'import site; print(site.getsitepackages()[0])' > "$$($(PEERS_VENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/main-venv.pth"
	$(PEERS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-peers.txt
	@touch $@

bench-models: archive ## Memory a second model costs and how two models share throughput (reports/models_bench.md)
	$(PY) -m scripts.models_bench

report: venv ## Re-run the measurements and rewrite the measured sections of REPORT.md
	$(PY) -m scripts.report

compose-up: archive ## Build and start the containerised stack (needs Docker)
	MODEL_VERSION=$(VERSION) docker compose up --build --detach --wait

compose-down: ## Stop the containerised stack (keeps Prometheus/Grafana data)
	docker compose down

compose-test: venv ## Build the images, start the Compose stack on a real Docker engine, exercise it, tear it down
	bash scripts/compose_test.sh

# Replicas on Docker Swarm (docker/swarm/stack.yml): REPLICAS, CPUS (per replica), TLS_PEM (certificate + key;
# default a self-signed one for localhost), SWARM_HTTP_PORT/SWARM_HTTPS_PORT (8000/8443)
swarm-up: archive ## Deploy REPLICAS replicas (gateway + TorchServe) behind HAProxy (TLS) with Redis on Docker Swarm
	$(PY) -m scripts.swarm up --replicas $(or $(REPLICAS),2) --cpus $(or $(CPUS),0.5) $(if $(GIVEN_VERSION),--version $(GIVEN_VERSION))

swarm-down: venv ## Remove the Swarm stack (and leave the swarm if swarm-up created it)
	$(PY) -m scripts.swarm down

swarm-test: venv ## Build, deploy, measure (throughput, spread, updates, rollbacks, a kill, TLS) and tear down; table into REPORT.md
	$(PY) -m scripts.swarm test
