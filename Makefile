# Thin targets; the real work lives in the package and its tools.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/jukinet/v1/*.proto)
# buf (lint, format, breaking) from the npm registry, pinned, inside the venv.
BUF_VERSION := 1.75.0
BUF_DIR := $(VENV)/buf
BUF := $(abspath $(BUF_DIR))/node_modules/.bin/buf
BUF_STAMP := $(BUF_DIR)/.installed-$(BUF_VERSION)

.PHONY: setup system-deps protos check-protos lint format typecheck imports check test test-sqlite demo bench clean \
	buf buf-format buf-breaking deploy-check

setup: $(STAMP) $(BUF_STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

$(BUF_STAMP):
	npm install --silent --no-audit --no-fund --prefix $(BUF_DIR) @bufbuild/buf@$(BUF_VERSION)
	touch $@

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

# buf lint (STANDARD, exceptions explained in protos/buf.yaml) and buf format.
buf: $(BUF_STAMP)
	cd protos && $(BUF) lint
	cd protos && $(BUF) format --diff --exit-code

buf-format: $(BUF_STAMP)
	cd protos && $(BUF) format --write

# Wire compatibility with the last release: nothing to compare before the first v* tag.
# (git-common-dir: in a worktree, .git is a file and the tags live in the main repository.)
buf-breaking: $(BUF_STAMP)
	@tag=$$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null); \
	if [ -z "$$tag" ]; then \
		echo "buf breaking: skipped, no v* release tag yet"; \
	else \
		repo=$$(git rev-parse --path-format=absolute --git-common-dir); \
		echo "buf breaking: against $$tag"; \
		cd protos && $(BUF) breaking --against "$$repo#format=git,tag=$$tag,subdir=protos"; \
	fi

# The Kubernetes manifests against the Kubernetes JSON schemas kubernetes-validate
# ships (offline, strict: an unknown field fails), and the compose file where
# Docker Compose is installed.
deploy-check: $(STAMP)
	$(BIN)/kubernetes-validate --strict --quiet deploy/k8s/*.yaml
	@if docker compose version >/dev/null 2>&1; then \
		docker compose -f deploy/compose.yaml config --quiet && echo "compose.yaml: valid"; \
	else \
		echo "docker compose config: skipped, Docker Compose is not installed"; \
	fi

check: lint typecheck imports check-protos buf buf-breaking deploy-check

# Runs the whole suite. PostgreSQL tests use JUKINET_TEST_PG_DSN (default: the
# local server); set JUKINET_TEST_PG=skip on a machine without PostgreSQL.
# The tests are spread over TEST_WORKERS pytest-xdist processes (default: one
# per CPU); tests that share a module's fixture stay on one worker (their
# xdist_group). TEST_WORKERS=0 runs them all in the pytest process itself
# (for --pdb, or to read one test's output as it comes).
TEST_WORKERS ?= auto
PYTEST_XDIST = -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The system packages the tests need: SoftHSM2, the PKCS#11 token an operator
# card is in the tests (jukinet/card.py), and the IPA fonts the copies of
# resident records are printed with (jukinet/copydoc.py). Installed with
# apt-get as root on Debian or Ubuntu, all in one call; anywhere else, the
# command to run is printed.
SYSTEM_PACKAGES := softhsm2 fonts-ipafont-gothic fonts-ipafont-mincho
IPA_FONTS := /usr/share/fonts/opentype/ipafont-gothic/ipag.ttf /usr/share/fonts/opentype/ipafont-mincho/ipam.ttf

system-deps:
	@missing=""; \
	command -v softhsm2-util >/dev/null 2>&1 || missing="softhsm2"; \
	for font in $(IPA_FONTS); do [ -f "$$font" ] || missing="$$missing fonts"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(SYSTEM_PACKAGES) (Debian)"; \
	    apt-get update -q || exit 1; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES) || exit 1; \
	  else \
	    echo "missing system packages: sudo apt-get install $(SYSTEM_PACKAGES)" \
	      "(Debian, Ubuntu), or your system's packages of SoftHSM2 and the IPA fonts" >&2; \
	    exit 1; \
	  fi; \
	fi

test-sqlite: $(STAMP) system-deps
	JUKINET_TEST_PG=skip $(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

demo: $(STAMP) system-deps
	$(BIN)/python -m tools.demo $(DEMO_ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
