# Thin targets; the real work lives in the package and its tools.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/jukinet/v1/*.proto)

.PHONY: setup protos check-protos lint format typecheck imports check test test-sqlite demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

protos: $(STAMP)
	$(BIN)/python -m tools.protogen jukinet/v1

check-protos: $(STAMP)
	$(BIN)/python -m tools.protogen --check jukinet/v1

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy jukinet services gateway tools bench tests

# The layers (tools and CLI -> nodes -> core) and no import cycles: .importlinter.
imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

check: lint typecheck imports check-protos

# Runs the whole suite. PostgreSQL tests use JUKINET_TEST_PG_DSN (default: the
# local server); set JUKINET_TEST_PG=skip on a machine without PostgreSQL.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-sqlite: $(STAMP)
	JUKINET_TEST_PG=skip $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m tools.demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
