"""Process plumbing behind ``tests.support.services``: probes, and one service process
started in its own process group with its output in a log file, stopped, killed or paused by
PID with a deadline on every wait.
"""

from __future__ import annotations

import atexit
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Self

LOOPBACK = "127.0.0.1"
POLL_INTERVAL = 0.05  # seconds between readiness probes: fast to notice, cheap to repeat
PAUSE_TIMEOUT = 5.0  # seconds for every thread of a paused service to stop
_LOG_TAIL_LINES = 30


class ServiceError(RuntimeError):
    """A test service could not be found, started, reached or stopped in time."""


def dies_with_us(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when this process dies, even by SIGKILL:
    a test run killed midway (a CI timeout, a developer's kill -9) leaves no relay or
    service running on, costing the machine CPU and ports for whatever runs next.

    Through util-linux's ``setpriv --pdeathsig`` (it execs the command: same PID), and
    only from the main thread: the kernel sends the signal when the *thread* that
    started the process ends, and a helper thread's end would take the service along."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return argv
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


# --- probes -------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` now.

    The port comes from below the kernel's ephemeral range when there is room: there no
    outgoing connection can take it while a service is down, and a client retrying a
    stopped service can never connect to itself. It is released before returning, so a
    service that then fails to bind reports it with its log.
    """
    floor = _ephemeral_port_floor()
    for _ in range(100):
        port = random.randrange(10_000, floor) if floor > 11_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise ServiceError(f"found no free port on {host} in 100 tries")


def _ephemeral_port_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0  # unknown: let the kernel choose


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something listens on ``host:port`` and accepts within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            # with nobody listening, a loopback connect from an ephemeral port equal to
            # ``port`` "succeeds" by connecting the socket to itself
            return bool(sock.getsockname() != sock.getpeername())
    except OSError:
        return False


def amqp_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if ``host:port`` answers the AMQP 0-9-1 header with ``Connection.Start``.

    A bare TCP connect proves little: the kernel completes handshakes for a paused or
    still-booting broker.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            head = _recv_exactly(sock, 11)
    except OSError:
        return False
    # frame type 1 (method) on any channel, then class 10 (connection), method 10 (start)
    return head[0] == 1 and head[7:11] == b"\x00\x0a\x00\x0a"


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed before a full frame header arrived")
        data += chunk
    return data


# --- processes ----------------------------------------------------------------------------


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _group_alive(pgid: int) -> bool:
    """True while any live process remains in process group ``pgid``.

    Zombies do not count: where PID 1 does not reap orphans (as in some containers and VMs),
    a killed postmaster's backends stay zombies and the group would never look empty.
    """
    stat_files = list(Path("/proc").glob("[0-9]*/stat"))
    if not stat_files:  # no procfs: fall back to asking the kernel
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat_file in stat_files:
        try:
            # the command name may contain spaces and parentheses; fields follow the last ")"
            state, _ppid, pgrp = stat_file.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue
        if int(pgrp) == pgid and (state not in ("Z", "X") or _threads_left(stat_file.parent)):
            return True
    return False


def _group_threads_running(pgid: int) -> bool:
    """True while a thread of a process in group ``pgid`` is not stopped (nor dead)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            pgrp = stat_file.read_text().rpartition(")")[2].split()[2]
            if int(pgrp) != pgid:
                continue
            threads = [task.read_text() for task in stat_file.parent.glob("task/*/stat")]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if any(t.rpartition(")")[2].split()[0] not in ("T", "t", "Z", "X") for t in threads):
            return True
    return False


def _threads_left(proc_dir: Path) -> bool:
    """True while a zombie's other threads still exit: the process holds its sockets (and
    so its ports) until the last thread is gone, though its main thread shows as dead."""
    try:
        return len(list((proc_dir / "task").iterdir())) > 1
    except OSError:
        return False


def credentials(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """uid, gid and supplementary groups to drop to, or Nones to keep our own."""
    if user is None:
        return None, None, None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(
            f"OS user {user!r} does not exist; it is needed to run as root"
        ) from None
    return entry.pw_uid, entry.pw_gid, []


class _Process:
    """One service process, leader of a session of its own so that signals can reach its
    whole group (postgres backends, the Erlang VM behind the rabbitmq-server script)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        log_path: Path,
        env: Mapping[str, str],
        cwd: Path,
        user: str | None,
    ) -> None:
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env, self.cwd, self.user = dict(env), cwd, user
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        uid, gid, groups = credentials(self.user)
        # a file, not a pipe: nobody drains a pipe, and a full one would block the service
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                dies_with_us(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                user=uid,
                group=gid,
                extra_groups=groups,
            )

    def signal(self, signum: int, *, group: bool = True) -> None:
        """Send ``signum`` to the whole group, or to the leader only."""
        if self._popen is None:
            return
        try:
            if group:
                os.killpg(self._popen.pid, signum)
            else:
                self._popen.send_signal(signum)  # a no-op once the leader was reaped
        except ProcessLookupError:
            pass

    def wait_stopped(self, timeout: float) -> bool:
        """Wait until every thread of the group is stopped (after SIGSTOP). ``killpg``
        returns before they are: a thread that was not on a CPU stops only once it is
        scheduled, and a service's other threads may answer a request meanwhile."""
        if self._popen is None:
            return True
        deadline = time.monotonic() + timeout
        while _group_threads_running(self._popen.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def wait_gone(self, timeout: float) -> bool:
        """Wait until the leader and every process of its group exited."""
        if self._popen is None:
            return True
        deadline = time.monotonic() + timeout
        while self._popen.poll() is None or _group_alive(self._popen.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, signum: int, timeout: float) -> None:
        """Send ``signum`` to the leader; SIGKILL the group if it outlives ``timeout``."""
        self.signal(signum, group=False)
        self.signal(signal.SIGCONT)  # a paused process acts on signals only once it runs
        if not self.wait_gone(timeout):
            self.kill()

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the whole group and wait until it is gone."""
        self.signal(signal.SIGKILL)
        if not self.wait_gone(timeout):
            raise ServiceError(f"{self.name} (pid {self.pid}) survived SIGKILL for {timeout} s")


class LocalService:
    """Lifecycle shared by the local services: one process, one temporary directory.

    Constructing creates the directory; ``cleanup()`` (or leaving the ``with`` block) kills
    the process and removes it.
    """

    _name = "service"
    _stop_signal: int = signal.SIGTERM

    def __init__(self, *, start_timeout: float, stop_timeout: float) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix=f"outbox-{self._name}-"))
        self.log_path = self.base_dir / f"{self._name}.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.last_start_seconds: float | None = None
        self._process: _Process | None = None
        self._paused = False
        _NOT_CLEANED_UP.add(self)

    @property
    def pid(self) -> int | None:
        """PID of the running service process (the group leader), or None."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """True while the service process is alive (it may be paused)."""
        return self._process is not None and self._process.running

    @property
    def paused(self) -> bool:
        """True while the service runs but is frozen by ``pause()``."""
        return self._paused and self.running

    def start(self) -> None:
        """Start the service, or do nothing if it runs, and wait until it answers."""
        if self.running:
            return
        for port in self._ports():
            # a stranger on our port would answer the readiness probe in our stead
            if tcp_accepts(LOOPBACK, port, timeout=0.2):
                raise ServiceError(f"{self._name} cannot start: port {port} is taken")
        self._prepare()
        process = _Process(
            self._name,
            self._command(),
            log_path=self.log_path,
            env=self._environment(),
            cwd=self.base_dir,
            user=self._os_user(),
        )
        started = time.monotonic()
        process.start()
        self._process, self._paused = process, False
        try:
            self._wait_ready(process)
        except BaseException:
            process.kill()
            raise
        self.last_start_seconds = time.monotonic() - started

    def _wait_ready(self, process: _Process) -> None:
        deadline = time.monotonic() + self.start_timeout
        # a probe alone could be answered by a stranger that holds our port
        while not (self._is_ready() and process.running):
            if not process.running:
                raise ServiceError(
                    f"{self._name} exited with code {process.returncode} before it was ready;"
                    f" log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"{self._name} was not ready within {self.start_timeout:g} s;"
                    f" log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL)

    def stop(self, *, timeout: float | None = None) -> None:
        """Stop gracefully; SIGKILL if it takes longer than ``timeout`` seconds."""
        if self._process is not None:
            self._process.stop(self._stop_signal, self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL the service and every process it started, as a crash would."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> None:
        """Stop gracefully, then start again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the service (SIGSTOP): connections stay open, but nothing answers from
        the moment this returns."""
        if self._process is not None:
            self._process.signal(signal.SIGSTOP)
            self._paused = True
            if not self._process.wait_stopped(PAUSE_TIMEOUT):
                raise ServiceError(f"{self._name} still ran {PAUSE_TIMEOUT:g} s after SIGSTOP")

    def resume(self) -> None:
        """Undo ``pause()`` (SIGCONT)."""
        if self._process is not None:
            self._process.signal(signal.SIGCONT)
            self._paused = False

    def cleanup(self) -> None:
        """Kill the service (its data is thrown away anyway) and remove its directory."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            _NOT_CLEANED_UP.discard(self)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # hooks for the subclasses
    def _prepare(self) -> None:
        """Create files the service needs before its first start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _os_user(self) -> str | None:
        return None

    def _ports(self) -> list[int]:
        return []

    def _is_ready(self) -> bool:
        raise NotImplementedError


_NOT_CLEANED_UP: set[LocalService] = set()


@atexit.register
def _clean_up_leftovers() -> None:
    """Last resort when a run ends without cleanup (Ctrl-C, an internal error): no service
    may outlive the interpreter that started it, nor leave its directory behind."""
    for service in list(_NOT_CLEANED_UP):
        if service._process is not None:
            service._process.signal(signal.SIGKILL)
        shutil.rmtree(service.base_dir, ignore_errors=True)


def run_logged(argv: list[str], *, log_path: Path, user: str | None, timeout: float) -> None:
    """Run a set-up command to completion, appending its output to ``log_path``."""
    uid, gid, groups = credentials(user)
    with open(log_path, "ab") as log:
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{argv[0]} did not finish within {timeout:g} s") from None
    if result.returncode != 0:
        raise ServiceError(
            f"{' '.join(argv)} failed with code {result.returncode}:\n{_log_tail(log_path)}"
        )
