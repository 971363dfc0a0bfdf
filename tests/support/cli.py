"""Running the installed ``outbox-relay`` command in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import dies_with_us

COMMAND = str(Path(sys.executable).with_name("outbox-relay"))
# The entry point that names the in-memory connector ``memory``, for test runs only.
TEST_DOUBLES = Path(__file__).with_name("doubles")


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give the command: no OUTBOX_RELAY_* variables
    and no test doubles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_RELAY_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def clean_env(**extra: str) -> dict[str, str]:
    """``user_env`` plus the test doubles (``--connector memory``), and no metrics server
    unless a test asks for one with --metrics-port: relays of tests running side by side
    (and of other test runs on the machine) would take each other's port, which a relay
    refuses."""
    env = user_env()
    env["PYTHONPATH"] = str(TEST_DOUBLES)
    env["OUTBOX_RELAY_METRICS_PORT"] = "0"
    env.update(extra)
    return env


def outbox_relay(
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        check=False,
    )


class RelayProcess:
    """``outbox-relay run ...`` in the background, logging to a file; stopped by PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            dies_with_us([COMMAND, "run", *args]),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} never logged; output:\n{self.output()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        """Make sure the process is gone (finalizer): SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(timeout=20)
        self.kill()
