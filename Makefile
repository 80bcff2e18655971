# Grace's one task runner. `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_DB ?= postgresql://postgres@127.0.0.1:5432/postgres

.PHONY: run test test-sqlite lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: create the virtualenv, install, migrate and serve Grace on SQLite
run: $(STAMP)
	$(BIN)/grace serve

## test: the whole suite, on SQLite and on PostgreSQL (GRACE_TEST_DATABASE_URL)
test: $(STAMP)
	GRACE_TEST_DATABASE_URL=$${GRACE_TEST_DATABASE_URL:-$(TEST_DB)} $(BIN)/pytest

## test-sqlite: the suite on SQLite only
test-sqlite: $(STAMP)
	GRACE_TEST_BACKENDS=sqlite $(BIN)/pytest

## lint: ruff (lint and format check) and mypy (strict, on src/grace and the tests)
lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)
	$(BIN)/ruff format --check src tests $(wildcard bench)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests $(wildcard bench)
	$(BIN)/ruff check --fix src tests $(wildcard bench)

## bench: run the benchmarks; each writes JSON under bench/results/
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	GRACE_TEST_DATABASE_URL=$${GRACE_TEST_DATABASE_URL:-$(TEST_DB)} $(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
