# rawcap: `make demo` and `make test` are the two commands the README opens with.
# Both run `make setup` first (idempotent: a second run takes seconds).
SHELL := /bin/bash
VENV ?= .venv
PY_PACKAGES := $(wildcard rawcap schemas capture enrich archiver dissector forensics history)

.PHONY: setup demo test lint image stack-up stack-down stack-status

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

# The whole suite; integration tests start their own private stack (tests/conftest.py).
test: setup
	$(VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

# The container image (OCI layout under $$RAWCAP_STACK_CACHE/image, no Docker): see
# docs/image.md. `make setup` builds it too; this target alone also writes an oci-archive.
image:
	bash compose/image/build.sh --archive

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
