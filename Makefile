# Two commands a newcomer needs: `make run` (the service, dev mode, bundled config) and `make test`.
# `make test` installs nothing outside .venv/ and needs no root: the tests that need Chromium, PostgreSQL or
# nginx are skipped where those are missing, and named at the end (PostgreSQL also comes from the pgserver
# wheel of the test extra). CI (.ci/run) installs them first and sets CI=true, where a missing one fails.
# `make test-fast`: the tests that need none of them and start no process, on every core (under a minute).
PYTHON ?= python3
PORT   ?= 8080
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench bench-hostile bench-simulate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@$(BIN)/cds-service serve --dev --port $(PORT)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -n auto --dist loadfile -m "not (browser or postgres or nginx or slow)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

bench-hostile: $(STAMP)
	$(BIN)/python -m bench.hostile

bench-simulate: $(STAMP)
	$(BIN)/python -m bench.simulate

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
