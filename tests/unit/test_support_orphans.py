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
# says its PID (the process says "ready"), and waits to be killed.
TEST_RUN = """
import subprocess, sys, time
from tests.support.processes import dies_with_us
LIVES = "import time; print('ready', flush=True); time.sleep(120)"
child = subprocess.Popen(dies_with_us([sys.executable, "-c", LIVES]), start_new_session=True)
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
        # Its PID from the test run, "ready" from the process once its own code runs: the
        # kernel's promise holds once setpriv has asked for it and the command's exec is
        # over (Popen returns as soon as setpriv starts; a kill in the instant after the
        # exec, which a test run does not die in, left the process in 1 of ~30 tries).
        lines = {run.stdout.readline().strip() for _ in range(2)}
        assert "ready" in lines
        child = int(next(line for line in lines if line != "ready"))
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
