# rawcap: `make demo` and `make test` are the two commands the README opens with.
# Both run `make setup` first (idempotent: a second run takes seconds).
SHELL := /bin/bash
VENV ?= .venv
PY_PACKAGES := $(wildcard rawcap schemas capture enrich archiver dissector forensics history)

.PHONY: setup demo test lint stack-up stack-down stack-status

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The whole suite; integration tests start their own private stack (tests/conftest.py).
test: setup
	$(VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

# ruff and mypy both run; either failing fails the target.
lint:
	@rc=0; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/mypy $(PY_PACKAGES) tests || rc=1; \
	exit $$rc

stack-up:
	$(VENV)/bin/rawcap stack up

stack-down:
	$(VENV)/bin/rawcap stack down

stack-status:
	$(VENV)/bin/rawcap stack status
