# Two commands: `make run` starts the service, `make test` runs the whole suite.
# Each creates .venv and installs the pinned dependencies it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# make image-test builds and runs the image with a docker-compatible command; these defaults
# are the local stand-ins of a machine without a Docker engine or a registry.
CONTAINER_TOOLS ?= ../shared/container
DOCKER ?= $(CONTAINER_TOOLS)/docker
BASE_IMAGE ?= $$($(CONTAINER_TOOLS)/base-image)

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run worker test lint pins image-test services demo bench sentry-alerts docs

$(BIN)/gunicorn: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: $(BIN)/gunicorn requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/gunicorn
	$(BIN)/gunicorn -c deploy/gunicorn.conf.py

# The queue worker for heavy tasks: TASK_QUEUE's library (celery, dramatiq or rq) on BROKER_URL, as
# `make run` uses them to enqueue. SIGTERM gives running tasks WORKER_SHUTDOWN_SECONDS, then requeues
# them. The library's own options follow: make worker ARGS=--queues=default
worker: $(BIN)/gunicorn
	$(BIN)/python -m app.worker_main $(ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint services
	$(BIN)/pytest

# The dashboard and alert tests run Debian's prometheus and promtool; the queue tests redis-server
# and rabbitmq-server (started by the tests as their own nodes, not as the system's service).
services:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v redis-server >/dev/null \
	  && [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q prometheus redis-server rabbitmq-server; }

# Traffic for the dashboards, failing tasks included: start the stack first, e.g.
# docker compose -f deploy/compose.yaml up --build (DEMO_URL, DEMO_SECONDS, API_TOKEN).
demo:
	$(PYTHON) deploy/demo.py

# What observability costs, web and queue, as ratios to the bare libraries and their peers in one
# run (about 19 minutes on 2 cores): rewrites bench/results.json, bench/RESULTS.md and docs/performance.md.
# BENCH_ONLY=web|queue runs a part; BENCH_ROUNDS, BENCH_SECONDS and BENCH_QUEUE_ROUNDS shorten it.
bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

# The docs' reference parts written again from the code: settings, metrics, performance figures.
docs: $(BIN)/gunicorn
	$(BIN)/python -m docs.generate

image-test: $(VENV)/.dev
	DOCKER=$(DOCKER) BASE_IMAGE=$(BASE_IMAGE) $(BIN)/pytest -m container

# Sentry's alerts and monitors from deploy/sentry/ (SENTRY_AUTH_TOKEN, SENTRY_ORG, SENTRY_PROJECT,
# SENTRY_URL). Standard library only. `make sentry-alerts ARGS=--dry-run` prints what it would send.
sentry-alerts:
	$(PYTHON) deploy/sentry/apply.py $(ARGS)

# Re-pin after editing requirements*.in. Needs uv (pip install uv); the output records no registry host.
pins:
	uv pip compile --python-version 3.11 --no-header requirements.in -o requirements.txt
	uv pip compile --python-version 3.11 --no-header requirements-dev.in -o requirements-dev.txt
