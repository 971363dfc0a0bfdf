"""The reproducible benchmark suite: ``python -m benchmarks.run --quick`` (see run.py).

Never part of the default test run; every figure comes from the installed
``outbox-relay`` command in a subprocess, next to a naive one-row-at-a-time baseline.
"""
