# berthd: `make run` starts it on ./run/berthd.sock; `make test` sets everything up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: setup run test bench lint install clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

run: setup
	mkdir -p run var
	$(BIN)/berthd --socket ./run/berthd.sock --data-dir ./var --log-file ./var/berthd.log

test: setup
	bash scripts/test-deps.sh
	bash scripts/with-engine.sh $(BIN)/pytest -n 2 $(PYTEST_ARGS)

bench: setup
	bash scripts/test-deps.sh
	bash scripts/with-engine.sh $(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check daemon protocol tests bench
	$(BIN)/ruff format --check daemon protocol tests bench
	$(BIN)/mypy
	$(BIN)/mypy --strict tests/daemon_proc.py tests/wire.py tests/docker_engine.py tests/conftest.py tests/test_layout.py tests/test_packaging.py

install:
	bash scripts/install.sh

clean:
	rm -rf run var .pytest_cache .mypy_cache .ruff_cache
