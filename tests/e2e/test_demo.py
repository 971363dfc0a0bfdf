"""`make demo` as a person sees it: on a terminal (a pty), stopped with Ctrl-C (SIGINT to
the terminal's foreground process group: make, uv and the demo alike)."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
REPORT = re.compile(r"^\s+[\d.]+s\s+written\s+(\d+)\s+pending\s+\d+\s+delivered\s+(\d+)", re.M)


def _as_from_a_terminal() -> None:
    """A command typed at a terminal gets Ctrl-C; one started from a background job of a
    script (a CI runner's) inherits SIGINT ignored, which would make this test pass or
    fail by how it was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Terminal:
    """A command on a pty of its own, in a process group of its own."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
            start_new_session=True, preexec_fn=_as_from_a_terminal,
        )  # fmt: skip
        os.close(slave)
        self.screen = ""

    def read_until(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.screen, re.M):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{pattern!r} never shown; the screen:\n{self.screen}")
        return self.screen

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self._master], [], [], min(timeout, 1.0))
        if not ready:
            return self.proc.poll() is None
        try:
            chunk = os.read(self._master, 65536)
        except OSError:  # EIO: the command closed the terminal
            return False
        self.screen += chunk.decode(errors="replace").replace("\r\n", "\n")
        return bool(chunk)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        os.close(self._master)


@pytest.fixture
def demo_terminal():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.update(DEMO_SECONDS="120", TERM="xterm")
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    terminal = Terminal([make, "--no-print-directory", "demo"], env)
    yield terminal
    terminal.close()


def test_ctrl_c_ends_the_demo_with_its_summary_and_nothing_else(demo_terminal):
    screen = demo_terminal.read_until(r"writes orders for 120s.*Ctrl-C stops early", 120)
    demo_terminal.read_until(r"the application writes now", 180)
    demo_terminal.read_until(r"(\n\s+[\d.]+s\s+written.*){2}", 60)
    demo_terminal.ctrl_c()
    screen = demo_terminal.read_until(r"stopped everything", 120)
    assert demo_terminal.proc.wait(30) != 0  # make, like a shell, dies of the SIGINT it got
    after = screen[screen.index("Ctrl-C: stopping the writers") :]
    assert "Traceback" not in screen and "make: ***" not in screen, screen
    assert not re.search(r"%\d\|", screen), screen  # no librdkafka lines
    assert re.search(r"\nwritten \d+, delivered \d+ distinct", after), after
    assert "commit-to-consumer latency: p50" in after
    assert "relays:              2 alive" in after, after  # shown while they still run
    for written, delivered in REPORT.findall(screen):
        assert int(delivered) <= int(written), screen
