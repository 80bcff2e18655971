# Grace's one task runner. `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DB ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: run test test-sqlite system-packages bench-packages lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: create the virtualenv, install, migrate and serve Grace on SQLite
run: $(STAMP)
	$(BIN)/grace serve

# Debian packages the suite drives: espeak-ng speaks the voice tests' notes, sox converts them,
# chromium is for the web UI tests, strace counts SQLite's fsync calls (tests/acceptance/test_durability.py).
# Installed only when a command is missing.
SYSTEM_COMMANDS := espeak-ng sox chromium strace
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

## system-packages: install the Debian packages the tests need, only those missing
system-packages:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

## test: the whole suite, on SQLite and on PostgreSQL (GRACE_TEST_DATABASE_URL)
test: $(STAMP) system-packages
	GRACE_TEST_DATABASE_URL=$${GRACE_TEST_DATABASE_URL:-$(TEST_DB)} $(BIN)/pytest

## test-sqlite: the suite on SQLite only
test-sqlite: $(STAMP) system-packages
	GRACE_TEST_BACKENDS=sqlite $(BIN)/pytest

## lint: ruff (lint and format check) and mypy (strict, on src/grace and the tests)
lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests $(wildcard bench)
	$(BIN)/ruff check --fix src tests $(wildcard bench)

# Debian packages the benchmarks drive: wrk loads `grace serve` over HTTP (bench/bench_http_edge.py).
BENCH_COMMANDS := wrk

## bench-packages: install the Debian packages the benchmarks need, only those missing
bench-packages:
	@missing=""; for c in $(BENCH_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi

## bench: run the benchmarks; each writes JSON under bench/results/
bench: $(STAMP) bench-packages
	$(BIN)/pip install --quiet -e '.[bench]'
	GRACE_TEST_DATABASE_URL=$${GRACE_TEST_DATABASE_URL:-$(TEST_DB)} $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
