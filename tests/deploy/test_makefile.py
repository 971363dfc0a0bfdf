"""The Makefile, as a newcomer meets it: `make test` (and each tier) shows why tests were
skipped, and a Python without venv's ensurepip (stock Debian/Ubuntu) gets the package
to install instead of a failed `python3 -m venv`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.contract import ROOT

MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def make(*args: str, cwd: Path = ROOT, path: str | None = None) -> subprocess.CompletedProcess:
    # Not what a user's shell would not have: make's own variables, and the uv that
    # `uv run` (make test) names in UV, which the Makefile would take instead of its own.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS")) and k != "UV"
    }
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [str(MAKE), "--no-print-directory", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("target", ["test", "unit", "integration", "e2e", "faults"])
def test_every_test_target_shows_skip_reasons(target):
    planned = make("-n", target, "UV=uv")
    assert planned.returncode == 0, planned.stderr
    runs = [line for line in planned.stdout.splitlines() if " pytest" in line]
    assert runs and all(" pytest -ra" in line for line in runs), planned.stdout


FAKE_PYTHON = """#!/bin/sh
# python3 as on Debian/Ubuntu without python3-venv: no ensurepip, so venv cannot make pip
case "$*" in
  *ensurepip*) echo "ModuleNotFoundError: No module named 'ensurepip'" >&2; exit 1 ;;
  *"-m venv"*) echo "Error: Command '[\\"$3/bin/python3\\", \\"-m\\", \\"ensurepip\\"]' \\
returned non-zero exit status 1." >&2; mkdir -p "$3/bin"; exit 1 ;;
esac
exec {python} "$@"
"""


def test_a_python_without_ensurepip_is_told_which_package_to_install(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "python3"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    # no uv on PATH either: the Makefile must bootstrap it through python3
    path = f"{fake_bin}:/usr/bin:/bin"
    result = make("setup", cwd=tmp_path, path=path)
    assert result.returncode != 0
    version = "python{}.{}-venv".format(*sys.version_info[:2])
    assert "sudo apt-get install python3-venv" in result.stderr, result.stderr
    assert version in result.stderr
    assert not (tmp_path / ".tools").exists()  # nothing half-made for the next run to trip on
