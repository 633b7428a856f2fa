# Two commands matter: `make up` (set up and start the stack) and `make test` (set up and test).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

VERSION ?= 1.0
USERS ?= 20
SPAWN_RATE ?= 5
DURATION ?= 2m
WEIGHTS ?= models/weights/v$(VERSION)/best.pt
GATE_DATA ?= samples
PACKAGE = bash scripts/package_mar.sh --weights $(WEIGHTS) --version $(VERSION) --gate-data $(GATE_DATA)

.PHONY: help venv archive package up down status logs test lint compose-up compose-down compose-test
.PHONY: redeploy rollback canary promote history loadtest bench report soak

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

archive: venv ## Build yolo_v$(VERSION).mar if missing and point the cold start at it if nothing is deployed
	@test -f serving/model-store/yolo_v$(VERSION).mar || $(PACKAGE)
	@test -L serving/model-store/yolo_current.mar || $(PY) -m scripts.stack set-current $(VERSION)

package: venv ## Package WEIGHTS as VERSION, gated on GATE_DATA (FORCE=1 to rebuild an existing version)
	$(PACKAGE) $(if $(FORCE),--force)

up: archive ## Set everything up and start TorchServe + gateway (idempotent)
	$(PY) -m scripts.stack up

down: ## Stop the gateway and TorchServe
	@if [ -x $(PY) ]; then $(PY) -m scripts.stack down; else echo "nothing to stop (no .venv)"; fi

status: venv ## Show processes, deployed version and readiness
	$(PY) -m scripts.stack status

logs: venv ## Tail the stack's logs
	$(PY) -m scripts.stack logs

lint: venv ## Static checks
	$(VENV)/bin/ruff check serving gateway scripts models tests
	$(VENV)/bin/ruff format --check serving gateway scripts models tests

test: venv lint ## Set everything up, lint, and run the whole test suite
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -p no:cacheprovider -ra $(PYTEST_ARGS)

redeploy: venv ## Package WEIGHTS as VERSION (unless packaged) and deploy it with no downtime
	$(NEED_VERSION)
	@test -f serving/model-store/yolo_v$(VERSION).mar || $(PACKAGE)
	bash scripts/deploy.sh $(VERSION)

rollback: venv ## Abort a canary, or go back to the previous version (or VERSION=...)
	bash scripts/rollback.sh $(GIVEN_VERSION)

canary: venv ## Package (unless packaged) and canary VERSION on PERCENT % of /predict traffic
	$(NEED_VERSION)
	@test -n "$(PERCENT)" || { echo "error: say how much traffic: make canary VERSION=$(VERSION) PERCENT=20" >&2; exit 1; }
	@test -f serving/model-store/yolo_v$(VERSION).mar || $(PACKAGE)
	bash scripts/deploy.sh $(VERSION) --canary $(PERCENT)

promote: venv ## Make the running canary VERSION the default
	$(NEED_VERSION)
	bash scripts/deploy.sh $(VERSION) --promote

history: venv ## Print the deploy history (who, when, version, sha256, result)
	$(PY) -m scripts.deploy history

loadtest: venv ## Locust against the running stack (USERS, SPAWN_RATE, DURATION) into reports/; non-zero on any failure
	$(PY) -m scripts.loadtest --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION)

soak: venv ## Long run (DURATION=30m) of good, hostile and slow traffic on a private stack; memory and fds (reports/soak.md)
	$(PY) -m scripts.soak --duration $(if $(filter command line environment,$(origin DURATION)),$(DURATION),30m)

bench: venv ## In-process vs TorchServe vs gateway, default vs baseline (reports/bench.md); SWEEP=1 for the config grid
	$(PY) -m scripts.bench $(if $(SWEEP),--sweep)

report: venv ## Re-run the measurements and rewrite the measured sections of REPORT.md
	$(PY) -m scripts.report

compose-up: archive ## Build and start the containerised stack (needs Docker)
	MODEL_VERSION=$(VERSION) docker compose up --build --detach --wait

compose-down: ## Stop the containerised stack (keeps Prometheus/Grafana data)
	docker compose down

compose-test: venv ## Build the images, start the Compose stack on a real Docker engine, exercise it, tear it down
	bash scripts/compose_test.sh
