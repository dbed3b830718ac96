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
	@echo ""
	@echo "Open:  outputs/evaluation/report.html (the report, offline)   plots/synthesize/findings.png (the findings)"
	@echo "Files: models/export/ (the exported models and their card)   $(BIN)/dvc metrics show (every metric)"
	@echo "Next:"
	@echo "  source $(VENV)/bin/activate                       # then dvc, cxr and python are the project's"
	@echo "  dvc exp run --temp -S train.lr=0.001 && dvc exp show   # an experiment beside this run"
	@echo "  cxr predict $$(ls -d data/raw/synthetic/dicom/*/* | head -n 1)   # a study of the demo set"
	@echo "  cxr serve                                         # the Prefect UI and the nightly schedule"

test: install-test
	$(BIN)/pytest -q

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
