# recforge developer entry points. Every target installs what it needs first (into .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real datasets for tests, demo and benchmarks; CI exports this, locally it is ../shared/data.
export RECFORGE_DATA_DIR ?= $(abspath ../shared/data)
PYTEST_ARGS ?=

.PHONY: system-deps install demo test test-fast lint format bench docs wheel clean

install: $(VENV)/.installed

# torch is installed first and pinned: 2.13.0 (CPU build) is on local disk; an unpinned torch pulls CUDA.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,dev,bench,docs]"
	touch $@

demo: install
	$(BIN)/recforge demo

# Debian packages the tests drive for real: Chromium + ChromeDriver (the web page), PostgreSQL (the event
# store's server path) and PgBouncer in front of it, and nginx (the recommended reverse proxy). Root or sudo
# is needed once.
SYSTEM_PACKAGES := chromium chromium-driver postgresql pgbouncer nginx-light
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  && command -v nginx >/dev/null && test -x /usr/sbin/pgbouncer || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; }; }

test: install system-deps
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

# the inner loop: everything but model fits on real data, Spark, the browser and torchrun (< 3 min)
test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q -m "not slow and not spark and not browser" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# the documentation site (MkDocs + mkdocstrings API reference) into site/; warnings are errors
docs: install
	$(BIN)/mkdocs build --strict

# a wheel in dist/ (tests/test_docs.py installs it in a fresh venv and runs `recforge demo`)
wheel: install
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .

bench: install
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist site src/*.egg-info
