"""A test run killed midway leaves no process behind: what the tests start dies with them.

A relay started by a test once ran on for 26 minutes after its pytest was killed
(tests/support/processes.py, ``dies_with_us``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import dies_with_us

ROOT = Path(__file__).resolve().parents[2]
# A stand-in for a test run: it starts a long-lived process as the test support does,
# says its PID, and waits to be killed.
TEST_RUN = """
import subprocess, sys, time
from tests.support.processes import dies_with_us
child = subprocess.Popen(dies_with_us([sys.executable, "-c", "import time; time.sleep(120)"]),
                         start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="util-linux's setpriv is missing")
def test_a_process_a_test_started_dies_when_the_test_run_is_killed() -> None:
    run = subprocess.Popen([sys.executable, "-c", TEST_RUN], cwd=ROOT, stdout=subprocess.PIPE,
                           text=True)  # fmt: skip
    child = 0
    try:
        assert run.stdout is not None
        child = int(run.stdout.readline())
        assert alive(child)
        run.kill()  # SIGKILL: nothing of the test run's own code runs any more
        run.wait(timeout=10)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child)
    finally:
        run.kill()
        run.wait(timeout=10)
        if run.stdout is not None:
            run.stdout.close()
        if child and alive(child):
            os.kill(child, signal.SIGKILL)


def test_only_the_main_thread_ties_a_process_to_its_life() -> None:
    """The kernel signals when the starting *thread* ends: from a helper thread the
    command is left as it is."""
    import threading

    seen: list[list[str]] = []
    helper = threading.Thread(target=lambda: seen.append(dies_with_us(["true"])))
    helper.start()
    helper.join()
    assert seen == [["true"]]
    if shutil.which("setpriv"):
        assert dies_with_us(["true"])[-2:] == ["--", "true"]
