# Two commands a newcomer needs: `make run` (the service, dev mode, bundled config) and `make test`.
PYTHON ?= python3
PORT   ?= 8080
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-hostile clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@$(BIN)/cds-service serve --dev --port $(PORT)

test: $(STAMP)
	./scripts/ensure-chromium
	./scripts/ensure-postgres-nginx
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

bench-hostile: $(STAMP)
	$(BIN)/python -m bench.hostile

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
