# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Both bootstrap uv, install the locked dependencies into .venv, and need nothing else
# installed by hand besides PostgreSQL's server binaries (and RabbitMQ for the tests).

SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTEST_ARGS ?=
BENCH_ARGS ?= --quick
WRITER_ARGS ?= --update-docs docs/performance.md

.PHONY: setup demo test lint unit integration e2e faults bench bench-writers clean

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet uv

setup: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --quiet

demo: setup
	$(UV) run --frozen python deploy/demo.py

lint: setup
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy

test: lint
	$(UV) run --frozen pytest $(PYTEST_ARGS)

unit: setup
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(UV) run --frozen pytest tests/integration $(PYTEST_ARGS)

e2e: setup
	$(UV) run --frozen pytest tests/e2e $(PYTEST_ARGS)

faults: setup
	$(UV) run --frozen pytest tests/faults $(PYTEST_ARGS)

# Benchmarks are never part of `make test`; results go to benchmarks/results/.
bench: setup
	$(UV) run --frozen --group bench python -m benchmarks.run $(BENCH_ARGS)

# What the outbox costs the application's writes (~15 min); it writes the table of
# docs/performance.md (WRITER_ARGS= to leave the docs alone).
bench-writers: setup
	$(UV) run --frozen --group bench python -m benchmarks.writer_cost $(WRITER_ARGS)

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
