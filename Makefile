# Thin targets; everything a fresh Debian machine needs is installed from here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: install realparts run test lint format bench bench-http bench-memory stack-up stack-down k8s clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# `make run` needs the library and the example's frameworks only, not the dev tools.
RUN_STAMP := $(VENV)/.installed-run
$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[examples]'
	touch $(RUN_STAMP)

# Real Prometheus, Redis, PostgreSQL and wrk for the test suite (see README: Development).
realparts:
	@bash scripts/install_realparts.sh
	@bash scripts/install_grafana_schema.sh

run: $(RUN_STAMP)
	@bash scripts/run.sh serve

test: install realparts
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench

# Real uvicorn servers under wrk (docs/performance.md, "Over HTTP"); e.g.
# make bench-http BENCH_ARGS="--duration 3 --rounds 1 --only instrument_10 --mode plain"
bench-http: install realparts
	$(BIN)/python -m bench.bench_http $(BENCH_ARGS)

# A million requests over 100,000 paths through instrument(): memory, series, route count.
bench-memory: install
	$(BIN)/python -m bench.bench_memory $(BENCH_ARGS)

stack-up:
	@bash scripts/run.sh start

stack-down:
	@bash scripts/run.sh stop

# deploy/kubernetes/generated/ from compose/prometheus/alerts.yml, grafana/dashboards/ and
# compose/otel-collector/config.yaml (see docs/deploy.md).
k8s: install
	$(BIN)/python scripts/gen_k8s.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build dist *.egg-info
