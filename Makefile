# mssn-monai: create the virtual environment, install, run, test.
# CPU install path: torch is pinned to the CPU build 2.13.0 through constraints.txt.
# GPU users: see README ("Installing on a GPU machine").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow test-all lint format clean check-integrations

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## the main job on an embedded default (synthetic fields, detection, metrics)
demo: $(STAMP)
	$(PY) -m mssn_monai demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out

## MONAI Label and MONAI Deploy against `detect` (needs .venvs/label and .venvs/deploy, or MSSN_LABEL_VENV / MSSN_DEPLOY_VENV; see bundle/docs/README.md)
check-integrations: $(STAMP)
	bash scripts/check_integrations.sh
