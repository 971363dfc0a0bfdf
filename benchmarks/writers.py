"""The application side: preloading a backlog, and writers paced at a target rate.

Writers are separate processes (so their CPU and GIL stay out of the measuring process),
each with its own connection, ``synchronous_commit=on``, and transactions of
``rows_per_tx`` events. They follow an open-loop schedule: a writer that falls behind
catches up instead of lowering the offered rate, and reports how many rows it committed.
"""

from __future__ import annotations

import array
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.payloads import body_pool, event_key, event_text
from benchmarks.processes import machine_idle

INSERT = (
    "INSERT INTO outbox.messages (topic, key, payload)"
    " SELECT %(topic)s, k, p::json FROM unnest(%(keys)b::text[], %(payloads)b::text[]) AS t(k, p)"
)
PRELOAD_CHUNK = 5000

_spawn = mp.get_context("spawn")


def preload(dsn: str, topic: str, count: int) -> float:
    """COPY ``count`` events in transactions of PRELOAD_CHUNK rows; return seconds taken."""
    pool = body_pool()
    started = time.monotonic()
    copy = "COPY outbox.messages (topic, key, payload) FROM STDIN"
    with psycopg.connect(dsn) as conn:
        for first in range(0, count, PRELOAD_CHUNK):
            now = time.time()
            with conn.transaction(), conn.cursor().copy(copy) as writer:
                for n in range(first, min(first + PRELOAD_CHUNK, count)):
                    writer.write_row((topic, event_key(pool, n), event_text(pool, n, now)))
        conn.execute("ANALYZE outbox.messages")
        conn.commit()
    return time.monotonic() - started


@dataclass(frozen=True)
class WriterSpec:
    dsn: str
    topic: str
    rate: float  # events per second, this writer alone
    rows_per_tx: int
    first_n: int  # event numbers: first_n, first_n + stride, ...
    stride: int
    commit_log: str | None = None  # where to write (n, commit time) pairs, if wanted


def _write(spec: WriterSpec, committed: Any, stopping: Any) -> None:
    pool = body_pool()
    n = spec.first_n
    times = array.array("d")
    numbers = array.array("q")
    interval = spec.rows_per_tx / spec.rate
    with psycopg.connect(spec.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        next_at = time.monotonic()
        while not stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            wall = time.time()
            batch = [n + i * spec.stride for i in range(spec.rows_per_tx)]
            params = {
                "topic": spec.topic,
                "keys": [event_key(pool, m) for m in batch],
                "payloads": [event_text(pool, m, wall) for m in batch],
            }
            conn.execute(INSERT, params, prepare=True)  # autocommit: one transaction
            done = time.time()
            n += spec.rows_per_tx * spec.stride
            committed.value += spec.rows_per_tx
            if spec.commit_log is not None:
                numbers.extend(batch)
                times.extend([done] * len(batch))
    if spec.commit_log is not None:
        write_commit_log(spec.commit_log, numbers, times)


def write_commit_log(
    path: str | Path, numbers: array.array[int], times: array.array[float]
) -> None:
    """What a writer process committed, for the parent: event numbers and COMMIT times."""
    with open(path, "wb") as out:
        array.array("q", [len(numbers)]).tofile(out)
        numbers.tofile(out)
        times.tofile(out)


class WriterProcess:
    """A paced writer in a spawned process: ``target(spec, committed, stopping)`` counts
    its commits in ``committed`` and leaves its commit log at ``spec.commit_log``."""

    def __init__(self, target: Any, spec: Any, what: str) -> None:
        self.spec = spec
        self._what = what
        self._stopping = _spawn.Event()
        self._committed = _spawn.Value("q", 0, lock=False)
        self._process = _spawn.Process(
            target=target, args=(spec, self._committed, self._stopping), daemon=True
        )
        self._process.start()

    def committed(self) -> int:
        return int(self._committed.value)

    def stop(self) -> dict[int, float]:
        """Stop it; n -> COMMIT time of every event it committed."""
        self._stopping.set()
        self._process.join(20)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        if self._process.exitcode != 0:
            raise RuntimeError(f"{self._what} failed ({self._process.exitcode})")
        commits = read_commit_log(self.spec.commit_log)
        Path(self.spec.commit_log).unlink(missing_ok=True)
        return commits


def read_commit_log(path: str | Path) -> dict[int, float]:
    with open(path, "rb") as source:
        size = array.array("q")
        size.fromfile(source, 1)
        numbers, times = array.array("q"), array.array("d")
        numbers.fromfile(source, size[0])
        times.fromfile(source, size[0])
    return dict(zip(numbers, times, strict=True))


class Writers:
    """``count`` writer processes sharing ``rate`` events/s between them."""

    def __init__(
        self,
        dsn: str,
        topic: str,
        *,
        rate: float,
        count: int,
        rows_per_tx: int,
        first_n: int = 0,
        commit_log: str | None = None,
    ) -> None:
        self._stopping = _spawn.Event()
        self._counters = [_spawn.Value("q", 0, lock=False) for _ in range(count)]
        self._processes = []
        for i in range(count):
            spec = WriterSpec(
                dsn,
                topic,
                rate / count,
                rows_per_tx,
                first_n + i,
                count,
                f"{commit_log}.{i}" if commit_log else None,
            )
            process = _spawn.Process(
                target=_write, args=(spec, self._counters[i], self._stopping), daemon=True
            )
            self._processes.append(process)
        self.commit_logs = [f"{commit_log}.{i}" for i in range(count)] if commit_log else []

    def start(self) -> None:
        for process in self._processes:
            process.start()

    def committed(self) -> int:
        return sum(c.value for c in self._counters)

    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(5)
        failed = [p.exitcode for p in self._processes if p.exitcode not in (0, None)]
        if failed:
            raise RuntimeError(f"a writer process failed (exit codes {failed})")


# An offered rate no writer set here reaches: the writers go as fast as they can.
FLAT_OUT = 1_000_000.0


def writers_alone(
    dsn: str, topic: str, *, seconds: float, count: int, rows_per_tx: int
) -> dict[str, Any]:
    """How fast ``count`` writers commit into the outbox with no relay and no broker.

    The sustained workload offers rising rates to writers sharing the cores with the
    relay; where they fall short of the offered rate, this is the ceiling they would hit
    with the machine to themselves, so a "writers' limit" there is measured, not assumed.
    """
    writers = Writers(dsn, topic, rate=FLAT_OUT, count=count, rows_per_tx=rows_per_tx)
    writers.start()
    try:
        time.sleep(seconds / 3)  # connections, prepared statements, the first pages
        rows, idle, started = writers.committed(), machine_idle(), time.monotonic()
        time.sleep(seconds * 2 / 3)
        elapsed = time.monotonic() - started
        rows, idle = writers.committed() - rows, machine_idle() - idle
    finally:
        writers.stop()
    cores = os.cpu_count() or 1
    return {
        "max_sustained_msg_per_s": round(rows / elapsed),
        "machine_busy_pct": round(100 * (1 - idle / (elapsed * cores)), 1),
        "writers": count,
        "rows_per_tx": rows_per_tx,
        "seconds": seconds,
    }
