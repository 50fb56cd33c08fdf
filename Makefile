# mssn-monai: create the virtual environment, install, run, test.
# CPU install path: torch is pinned to the CPU build 2.13.0 through constraints.txt.
# GPU users: see README ("Installing on a GPU machine").

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS ?= constraints.txt
STAMP := $(VENV)/.installed
# the interpreter of the sharing venvs (empty: the one .venv was made from)
SHARE_PYTHON ?=

.PHONY: install demo test test-slow test-all lint format clean check-integrations label-venv deploy-venv label-server \
	test-integration test-bundle-share

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,openslide]"
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

## sharing, in fresh venvs kept under .venvs/ (made again when their requirements change): the packaged
## bundle passes the model zoo's no-network checks with only its required packages (.venvs/bundle), and
## the wheel from `python -m build` runs detect with the bundle it carries (.venvs/wheel, .venvs/build).
## The metadata schema is a local file: MSSN_BUNDLE_SCHEMA (default ../shared/schema/meta_schema_20240725.json).
test-bundle-share: $(STAMP)
	MSSN_SHARE_PYTHON="$(SHARE_PYTHON)" $(PY) -m pytest -q -m share tests/share

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out

## MONAI Label and MONAI Deploy against `detect` (needs .venvs/label from `make label-venv` and .venvs/deploy from `make deploy-venv`,
## or MSSN_LABEL_VENV / MSSN_DEPLOY_VENV; see bundle/docs/README.md)
check-integrations: $(STAMP)
	bash scripts/check_integrations.sh

## MONAI Label 0.8.5 in its own virtual environment (MSSN_LABEL_VENV, default .venvs/label), made once:
## monailabel with --no-deps plus its declared requirements minus sam2 (apps/monailabel/requirements.txt),
## torch pinned by constraints.txt (the CPU build where pip finds it), this package with --no-deps, and
## torchvision made importable next to a CPU torch (scripts/torchvision_cpu_guard.py). See bundle/docs/README.md.
MSSN_LABEL_VENV ?= .venvs/label
LABEL_PY := $(MSSN_LABEL_VENV)/bin/python
LABEL_STAMP := $(MSSN_LABEL_VENV)/.installed

$(LABEL_STAMP): apps/monailabel/requirements.txt constraints.txt pyproject.toml scripts/torchvision_cpu_guard.py
	test -x $(LABEL_PY) || $(PYTHON) -m venv $(MSSN_LABEL_VENV)
	$(LABEL_PY) -m pip install --quiet --upgrade pip
	$(LABEL_PY) -m pip install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(LABEL_PY) -m pip install --quiet --no-deps "monailabel==0.8.5"
	$(LABEL_PY) -m pip install --quiet -c $(CONSTRAINTS) -r apps/monailabel/requirements.txt
	$(LABEL_PY) -m pip install --quiet --no-deps -e .
	$(LABEL_PY) scripts/torchvision_cpu_guard.py
	$(LABEL_PY) -c "import monailabel.tasks.infer.bundle, monailabel.transform.post, mssn_monai; print('monailabel', monailabel.__version__)"
	touch $(LABEL_STAMP)

label-venv: $(LABEL_STAMP)

## MONAI Deploy App SDK 4.0.0 in its own virtual environment (MSSN_DEPLOY_VENV, default .venvs/deploy), made once:
## torch pinned by constraints.txt (the CPU build where pip finds it), apps/deploy/requirements.txt (the SDK, which
## brings holoscan; pydicom>=3 and highdicom, imported by the SDK but not declared), this package with --no-deps.
MSSN_DEPLOY_VENV ?= .venvs/deploy
DEPLOY_PY := $(MSSN_DEPLOY_VENV)/bin/python
DEPLOY_STAMP := $(MSSN_DEPLOY_VENV)/.installed

$(DEPLOY_STAMP): apps/deploy/requirements.txt constraints.txt pyproject.toml
	test -x $(DEPLOY_PY) || $(PYTHON) -m venv $(MSSN_DEPLOY_VENV)
	$(DEPLOY_PY) -m pip install --quiet --upgrade pip
	$(DEPLOY_PY) -m pip install --quiet -c $(CONSTRAINTS) "torch==2.13.0"
	$(DEPLOY_PY) -m pip install --quiet -c $(CONSTRAINTS) -r apps/deploy/requirements.txt
	$(DEPLOY_PY) -m pip install --quiet --no-deps -e .
	$(DEPLOY_PY) -c "import monai.deploy, highdicom, pydicom, mssn_monai; from monai.deploy.operators import MonaiBundleInferenceOperator; from importlib.metadata import version; print('monai-deploy-app-sdk', version('monai-deploy-app-sdk'))"
	touch $(DEPLOY_STAMP)

deploy-venv: $(DEPLOY_STAMP)

## a real MONAI Label server on the app: info, labels in, /train, /infer (json, dsa, asap, a tiled TIFF),
## active learning, a QuPath GeoJSON through scripts/submit_labels.py; and the MONAI Deploy app on two fields;
## builds $(MSSN_LABEL_VENV) and $(MSSN_DEPLOY_VENV) first when missing
test-integration: $(STAMP) $(LABEL_STAMP) $(DEPLOY_STAMP)
	MSSN_LABEL_VENV=$(abspath $(MSSN_LABEL_VENV)) MSSN_DEPLOY_VENV=$(abspath $(MSSN_DEPLOY_VENV)) \
	  $(PY) -m pytest -q -m integration tests/integration

## the MONAI Label server for apps/monailabel, in the foreground: make label-server STUDIES=DIR [PORT=8000]
## (builds $(MSSN_LABEL_VENV) first when it has no monailabel; Ctrl-C stops it)
PORT ?= 8000
STUDIES ?=
LABEL_BIN = $(abspath $(MSSN_LABEL_VENV))/bin

label-server:
	@test -n "$(STUDIES)" || { echo "usage: make label-server STUDIES=DIR [PORT=8000]" >&2; exit 2; }
	@test -d "$(STUDIES)" || { echo "STUDIES=$(STUDIES): no such folder" >&2; exit 2; }
	@test -x $(LABEL_BIN)/monailabel || $(MAKE) label-venv
	PATH="$(LABEL_BIN):$$PATH" MONAILABEL_PYEXE="$(LABEL_BIN)/python" $(LABEL_BIN)/monailabel start_server \
	  --app apps/monailabel --studies "$(STUDIES)" --host 127.0.0.1 --port $(PORT) \
	  --conf models mssn_mitosis --conf zoo_source github --conf sam2 false
