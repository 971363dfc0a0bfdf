# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both bootstrap uv, install the locked dependencies into .venv, and need nothing else
# installed by hand besides PostgreSQL's server binaries (and RabbitMQ for the tests).

SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTHON3 ?= python3
PYTEST_ARGS ?=
# -ra: every run says why each test was skipped, as CI's does
PYTEST := $(UV) run --frozen pytest -ra
BENCH_ARGS ?= --quick
WRITER_ARGS ?= --update-docs docs/performance.md

.PHONY: setup demo test lint unit integration e2e faults bench bench-writers bench-many clean

# uv comes from PyPI into .tools, through a virtual environment: Debian and Ubuntu ship
# venv's ensurepip in a package of its own, which a stock install lacks.
.tools/bin/uv:
	@$(PYTHON3) -c 'import ensurepip' 2>/dev/null || { \
	  venv=$$($(PYTHON3) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])'); \
	  echo "make: $(PYTHON3) cannot create a virtual environment (its ensurepip module is missing)." >&2; \
	  echo "      On Debian/Ubuntu: sudo apt-get install python3-venv (or $$venv), then make again;" >&2; \
	  echo "      or install uv yourself: https://docs.astral.sh/uv/getting-started/installation/" >&2; \
	  exit 1; }
	$(PYTHON3) -m venv .tools || { rm -rf .tools; exit 1; }
	.tools/bin/pip install --quiet uv

# Byte-compiled at install, as pip and the Docker image leave an install: where
# PYTHONDONTWRITEBYTECODE is set (CI images often set it), every relay the tests and the
# demo start would otherwise compile its ~300 modules again.
setup: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --quiet --compile-bytecode
	$(UV) run --frozen python -m compileall -q relay connectors >/dev/null

demo: setup
	$(UV) run --frozen python deploy/demo.py

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy

test: lint
	$(PYTEST) $(PYTEST_ARGS)

unit: setup
	$(PYTEST) tests/unit $(PYTEST_ARGS)

integration: setup
	$(PYTEST) tests/integration $(PYTEST_ARGS)

e2e: setup
	$(PYTEST) tests/e2e $(PYTEST_ARGS)

faults: setup
	$(PYTEST) tests/faults $(PYTEST_ARGS)

# Benchmarks are never part of `make test`; results go to benchmarks/results/.
bench: setup
	$(UV) run --frozen --group bench python -m benchmarks.run $(BENCH_ARGS)

# What the outbox costs the application's writes (~15 min); it writes the table of
# docs/performance.md (WRITER_ARGS= to leave the docs alone).
bench-writers: setup
	$(UV) run --frozen --group bench python -m benchmarks.writer_cost $(WRITER_ARGS)

# One relay over 200 tenant schemas against a relay of one outbox (issue 31, ~5 min a round).
bench-many: setup
	$(UV) run --frozen --group bench python -m benchmarks.many_outboxes $(MANY_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
