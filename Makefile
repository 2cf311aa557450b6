# cxr: the two commands of the README, and their parts.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/cxr-public
DEMO_MINUTES ?= 5

.PHONY: setup demo test services-up services-down lint

$(BIN)/cxr: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a looser spec pulls a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/cxr

setup: $(BIN)/cxr

# The main job on the embedded default: train a short checkpoint if none, index, search, print.
demo: setup
	$(BIN)/cxr demo --data $(DATA) --train-minutes $(DEMO_MINUTES)

# The test suite, with the services it needs started on loopback (non-default ports) and stopped after.
test: setup
	bash deploy/test-services.sh run $(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
