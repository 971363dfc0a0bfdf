"""Installing packages the way users do, for tests of what an install provides: uv (what
`make setup` bootstraps) into a throwaway venv or target directory, from its cache when
it can."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def uv() -> str:
    """The uv the Makefile uses: $UV, then the one on PATH, then .tools/bin/uv."""
    for candidate in (os.environ.get("UV"), shutil.which("uv"), str(ROOT / ".tools/bin/uv")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("uv is not installed (`make setup` bootstraps it into .tools/)")


def run_uv(*args: str, timeout: float = 180) -> None:
    result = subprocess.run(
        [uv(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"uv {' '.join(args)} failed:\n{result.stderr}"


def install_into_target(project: Path, target: Path) -> None:
    """Build ``project`` and install it into ``target`` (a directory for PYTHONPATH),
    without its dependencies: they are this venv's."""
    run_uv("pip", "install", "--quiet", "--python", sys.executable, "--no-deps",
           "--target", str(target), str(project))


def fresh_venv(path: Path, requirement: str) -> Path:
    """A new venv at ``path`` with ``requirement`` installed; its bin directory."""
    run_uv("venv", "--quiet", "--python", sys.executable, str(path))
    python = path / "bin" / "python"
    run_uv("pip", "install", "--quiet", "--python", str(python), requirement)
    return python.parent
