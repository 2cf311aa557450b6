# cxr: the two commands of the README, and their parts.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
DATA ?= ../shared/data/cxr-public ../shared/data/cxr-adult
DEMO_MINUTES ?= 5
# -qq: progress and the machine's own index warnings stay quiet; errors still print.
PIP_QUIET := -qq

.PHONY: setup demo test test-latest lock lint

# Installs exactly the committed lock (every transitive package pinned, pip and setuptools included), then the
# project itself without resolving anything further.
$(BIN)/cxr: pyproject.toml $(LOCK)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) -r $(LOCK)
	$(BIN)/pip install $(PIP_QUIET) --no-deps --no-build-isolation -e .
	touch $(BIN)/cxr

setup: $(BIN)/cxr

# The main job on the embedded default: train a short checkpoint if none, index, search, print.
demo: setup
	$(BIN)/cxr demo $(addprefix --data ,$(DATA)) --train-minutes $(DEMO_MINUTES)

# The test suite, with the services it needs started on loopback (non-default ports) and stopped after.
test: setup
	bash deploy/test-services.sh run $(BIN)/python -m pytest -q

# The canary before a lock refresh: a separate venv from the newest versions pyproject.toml allows, and the tests
# of the parts that drift hurts most (queue, PACS, API). If it passes, `make lock` and commit the new lock.
test-latest:
	rm -rf .venv-latest
	$(PY) -m venv .venv-latest
	.venv-latest/bin/pip install $(PIP_QUIET) --upgrade pip
	# torch pinned first: a looser spec pulls a multi-GB CUDA build
	.venv-latest/bin/pip install $(PIP_QUIET) torch==2.13.0
	.venv-latest/bin/pip install $(PIP_QUIET) --upgrade --upgrade-strategy eager -e '.[dev]'
	.venv-latest/bin/pip freeze --exclude-editable | grep -i -E '^(celery|kombu|redis|pynetdicom|fastapi|starlette|uvicorn|qdrant)' || true
	bash deploy/test-services.sh run .venv-latest/bin/python -m pytest -q tests/workers tests/pacs tests/api

# Refresh the lock to the newest versions pyproject.toml allows (pip-tools, in a venv of its own). The local
# "+cpu" label of this machine's torch wheel is dropped: `torch==2.13.0` picks that wheel here, PyPI's elsewhere.
lock:
	$(PY) -m venv .venv-lock
	.venv-lock/bin/pip install $(PIP_QUIET) pip-tools==7.7.0
	.venv-lock/bin/pip-compile --quiet --upgrade --extra dev --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --output-file $(LOCK) pyproject.toml
	sed -i -E 's/^(torch==[^+ ]+)\+[a-z0-9.]+/\1/; s/--output-file=[^ ]*requirements.lock/--output-file=requirements.lock/' $(LOCK)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
