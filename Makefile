# Two commands: `make run` starts the service, `make test` runs the whole suite.
# Each creates .venv and installs the pinned dependencies it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint pins

$(BIN)/gunicorn: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(BIN)/gunicorn requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/gunicorn
	$(BIN)/gunicorn -c deploy/gunicorn.conf.py

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# Re-pin after editing requirements*.in. Needs uv; the output records no registry host.
pins:
	uv pip compile --python-version 3.11 --no-header requirements.in -o requirements.txt
	uv pip compile --python-version 3.11 --no-header requirements-dev.in -o requirements-dev.txt
