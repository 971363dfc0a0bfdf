"""The relays under test, as subprocesses, and what the kernel says each one cost.

``outbox-relay run`` is started exactly as a user would start it (the installed command,
default settings, only the connection flags); the baselines are
``python -m benchmarks.tutorial_relay`` (a batch of 100, one flush, one UPDATE) and
``python -m benchmarks.naive_relay`` (one row at a time). CPU time is the process's own accounting
(utime + stime of every thread, /proc/<pid>/stat), memory its VmRSS / VmHWM.
"""

from __future__ import annotations

import atexit
import compileall
import functools
import os
import signal
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

RELAY_COMMAND = str(Path(sys.executable).with_name("outbox-relay"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[1]


def byte_compile() -> None:
    """Byte-compile every module a relay under test imports, as an install leaves them.

    ``pip install`` and the Docker image (UV_COMPILE_BYTECODE) compile at install time, so
    a user's relay starts from ``.pyc`` files. A machine with PYTHONDONTWRITEBYTECODE set
    and a venv synced without compiling would instead compile ~300 modules at every
    start (a few tenths of a second of CPU), and count that in each drain's startup.
    Up-to-date files are only checked, so this costs about a second after the first time.
    """
    paths = sysconfig.get_paths()
    for directory in {paths["purelib"], paths["platlib"]}:
        compileall.compile_dir(directory, quiet=1, workers=0)
    for package in ("relay", "connectors", "benchmarks"):
        compileall.compile_dir(ROOT / package, quiet=1, workers=0)


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_mb: float
    hwm_mb: float


def usage(pid: int) -> Usage:
    """CPU seconds so far (all threads) and resident memory of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    memory = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            memory[name] = int(value.split()[0]) / 1024
    return Usage(cpu, memory.get("VmRSS", 0.0), memory.get("VmHWM", 0.0))


def tree_cpu(pid: int) -> float:
    """CPU seconds so far of a live process and its live descendants (a service: the
    postmaster and its backends, which each start a session of their own; Tansu; the
    Erlang VM under the rabbitmq-server script)."""
    ticks, children = {}, defaultdict(list)
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended
            continue
        child = int(stat_file.parent.name)
        ticks[child] = int(fields[11]) + int(fields[12])
        children[int(fields[1])].append(child)
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += ticks.get(current, 0)
        pending.extend(children.get(current, ()))
    return total / CLOCK_TICKS


def _machine_ticks() -> list[int]:
    """/proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_idle() -> float:
    """Idle CPU seconds so far, all cores together (/proc/stat: idle + iowait)."""
    ticks = _machine_ticks()
    return (ticks[3] + ticks[4]) / CLOCK_TICKS


def machine_steal() -> float:
    """CPU seconds so far that the hypervisor gave to other guests while this machine
    wanted to run (/proc/stat: steal), all cores together."""
    return _machine_ticks()[7] / CLOCK_TICKS


class MachineShare:
    """How the cores' time went between ``start`` and ``stop``: busy, and stolen by the
    hypervisor. On a shared virtual machine a run that lost time to steal is slower for
    reasons outside this machine, which is worth knowing next to its figures."""

    def __init__(self) -> None:
        self._start: list[int] | None = None

    def start(self) -> None:
        self._start = _read_ticks_or_none()

    def stop(self) -> dict[str, float]:
        end = _read_ticks_or_none()
        if self._start is None or end is None:
            return {}  # no /proc/stat (not Linux): nothing to say
        spent = [b - a for a, b in zip(self._start, end, strict=True)]
        total = sum(spent) or 1
        return {
            "machine_busy_pct": round(100 * (total - spent[3] - spent[4] - spent[7]) / total, 1),
            "machine_steal_pct": round(100 * spent[7] / total, 1),
        }


def _read_ticks_or_none() -> list[int] | None:
    try:
        return _machine_ticks()
    except (OSError, ValueError, IndexError):
        return None


@functools.cache
def run_help() -> str:
    result = subprocess.run(
        [RELAY_COMMAND, "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    return result.stdout + result.stderr


def supports_flag(flag: str) -> bool:
    return flag in run_help()


class RelayProcess:
    """One relay subprocess; stopped with SIGTERM (then SIGKILL) by its PID."""

    def __init__(self, name: str, argv: list[str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}-{os.getpid()}-{id(self):x}.log"
        with open(self.log_path, "wb") as log:
            self._popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self._popen.pid

    def alive(self) -> bool:
        return self._popen.poll() is None

    def usage(self) -> Usage:
        return usage(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int | None:
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(10)
        _LIVE.discard(self)
        return self._popen.returncode


_LIVE: set[RelayProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    """No relay may outlive the benchmark (it would retry its vanished database forever)."""
    for process in list(_LIVE):
        if process.alive():
            process._popen.kill()


def relay_argv(
    mode: str, dsn: str, target_args: list[str], extra: list[str], metrics_port: int = 0
) -> list[str]:
    argv = [RELAY_COMMAND, "run", "--dsn", dsn, "--mode", mode, *target_args]
    if supports_flag("--metrics-port"):  # a port of its own (0: none)
        argv += ["--metrics-port", str(metrics_port)]
    if mode == "cdc" and supports_flag("--cdc-slot"):
        # slot names are cluster-wide; every run has a database (and so a slot) of its own
        argv += ["--cdc-slot", f"outbox_relay_{conninfo_to_dict(dsn)['dbname']}"]
    return [*argv, *extra]


def confirmed_by_relay(port: int, timeout: float = 2.0) -> int | None:
    """Messages the relay counted as confirmed by the broker (its
    ``outbox_relay_messages_total{outcome="delivered"}``), or None if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("outbox_relay_messages_total{") and 'outcome="delivered"' in line:
            total += float(line.rpartition(" ")[2])
    return int(total)


CONFIRM_HISTOGRAM = "outbox_relay_commit_to_confirm_seconds"


def relay_histogram(port: int, name: str, timeout: float = 2.0) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of one of the relay's histograms."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return parse_histogram(text, name)


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` in a Prometheus text exposition,
    summed over its label values."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            value = float(line.rpartition(" ")[2])
            key = float("inf") if bound == "+Inf" else float(bound)
            buckets[key] = buckets.get(key, 0.0) + value
    return buckets


def histogram_quantiles(
    before: dict[float, float], after: dict[float, float]
) -> dict[str, float | None]:
    """p50 and p99 of what a cumulative histogram gained between two scrapes, each as the
    upper bound (in ms) of the bucket it falls in."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    result: dict[str, float | None] = {"p50_ms": None, "p99_ms": None}
    for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        if total > 0:
            bound = next(b for b, c in zip(bounds, counts, strict=True) if c >= q * total)
            result[name] = bound * 1000
    return result


def naive_argv(dsn: str, target_args: list[str], progress: Path) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.naive_relay", "--dsn", dsn, *target_args,
        "--progress", str(progress),
    ]  # fmt: skip


def tutorial_argv(dsn: str, target_args: list[str], progress: Path) -> list[str]:
    return [
        sys.executable, "-m", "benchmarks.tutorial_relay", "--dsn", dsn, *target_args,
        "--progress", str(progress),
    ]  # fmt: skip


# The minimal relays' variants, by kind: the mode (benchmarks/minimal_relay.py polls,
# benchmarks/minimal_cdc_relay.py streams), its librdkafka settings, and how it waits
# for delivery reports.
MINIMAL_VARIANTS = {
    "minimal": ("poll", "plain", "flush"),
    "minimal-relay-kafka": ("poll", "relay", "flush"),
    "minimal-relay-kafka-thread": ("poll", "relay", "thread"),
    "minimal-cdc": ("cdc", "plain", "flush"),
    "minimal-cdc-relay-kafka": ("cdc", "relay", "flush"),
    "minimal-cdc-relay-kafka-thread": ("cdc", "relay", "thread"),
}


def minimal_argv(kind: str, dsn: str, target_args: list[str], progress: Path) -> list[str]:
    mode, settings, reports = MINIMAL_VARIANTS[kind]
    module = "benchmarks.minimal_cdc_relay" if mode == "cdc" else "benchmarks.minimal_relay"
    return [
        sys.executable, "-m", module, "--dsn", dsn, *target_args,
        "--kafka-settings", settings, "--reports", reports, "--progress", str(progress),
    ]  # fmt: skip


def confirmed_by_naive(progress: Path) -> int | None:
    try:
        return int(progress.read_text() or 0)
    except (OSError, ValueError):
        return None


def cdc_available(dsn: str, target_args: list[str], log_dir: Path) -> tuple[bool, str]:
    """Whether ``outbox-relay run --mode cdc`` runs in this version (it fails at once
    with a one-line error when it does not)."""
    probe = RelayProcess("cdc-probe", relay_argv("cdc", dsn, target_args, []), log_dir)
    try:
        probe._popen.wait(4)
    except subprocess.TimeoutExpired:
        probe.stop()
        return True, "running"
    return False, probe.log_tail(3).strip() or f"exit code {probe._popen.returncode}"


def log_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="outbox-bench-"))
