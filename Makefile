# The two user commands: `make demo` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
# dvc.yaml's stage commands call `python`: the venv's
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install install-test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/pip install -q "torch>=2.4,<2.15" "torchvision>=0.19,<0.30"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/dvc repro
	@cat outputs/evaluation/report.md
	@echo "\nReport: outputs/evaluation/report.html  Models: models/export/  All metrics: $(BIN)/dvc metrics show"

test: install-test
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
