"""The test services' pause: nothing of a paused service runs once pause() returned.

A fault test that pauses a broker and then publishes expects no answer; a thread of the
broker that had not stopped yet answered one in CI (tests/support/processes.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.support.processes import LocalService

# Busier than the machine has cores: some threads wait for a CPU when SIGSTOP is sent.
THREADS = 8
SPINNING = f"""
import threading
def spin():
    while True:
        sum(range(1000))
for _ in range({THREADS}):
    threading.Thread(target=spin).start()
"""


class SpinningThreads(LocalService):
    _name = "spinning"

    def _command(self) -> list[str]:
        return [sys.executable, "-c", SPINNING]

    def _is_ready(self) -> bool:
        return self.pid is not None and len(thread_states(self.pid)) > THREADS


def thread_states(pid: int) -> list[str]:
    stats = (task.read_text() for task in Path(f"/proc/{pid}/task").glob("*/stat"))
    return [stat.rpartition(")")[2].split()[0] for stat in stats]


def test_every_thread_of_a_paused_service_is_stopped_when_pause_returns() -> None:
    with SpinningThreads(start_timeout=10, stop_timeout=5) as service:
        assert service.pid is not None
        for _ in range(20):
            service.pause()
            assert set(thread_states(service.pid)) <= {"T", "t"}
            service.resume()
