# Two commands matter: `make up` (set up and start the stack) and `make test` (set up and test).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

VERSION ?= 1.0
WEIGHTS ?= models/weights/v$(VERSION)/best.pt
FORMAT ?= pt

.PHONY: help venv package up down status logs test lint

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## Create .venv with the pinned requirements

$(VENV)/.installed: requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@
