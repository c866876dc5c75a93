# Thin targets; the real work lives in the package and its tools.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/jukinet/v1/*.proto)

.PHONY: setup protos check-protos lint format typecheck check test test-sqlite demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

protos: $(STAMP)
	$(BIN)/python -m jukinet.protogen jukinet/v1

check-protos: $(STAMP)
	$(BIN)/python -m jukinet.protogen --check jukinet/v1

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy jukinet services gateway

check: lint typecheck check-protos

# Runs the whole suite. PostgreSQL tests use JUKINET_TEST_PG_DSN (default: the
# local server); set JUKINET_TEST_PG=skip on a machine without PostgreSQL.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-sqlite: $(STAMP)
	JUKINET_TEST_PG=skip $(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/jukinet demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m jukinet.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
