"""Light traffic: what a relay costs at 10, 100 and 1,000 one-row transactions a second.

One relay runs on a fresh database. First it is left idle (no traffic) for a window: its
CPU as a share of one core. Then writer processes (one connection each,
``synchronous_commit=on``; one per WRITER_RATE msg/s, as one connection's commits on this
shared machine reached ~450/s) commit one event per transaction at each rate in turn,
paced by deadline (a late commit is caught up, the rate does not drift); right after each
commit a writer also produces the same event straight to a second topic (the *bare producer*:
what the same event costs to reach a consumer with no outbox, in the same seconds). Two
plain consumers (``assign()``) note when each event arrives on either topic. Per rate:
the relay's CPU (utime + stime, /proc/PID/stat) over the window divided by the messages
it delivered in it, and the p50 of COMMIT returning -> arrival, relay and bare.
"""

from __future__ import annotations

import array
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from benchmarks.payloads import body_pool, event_key, event_text
from benchmarks.stack import Stack, wait_until
from benchmarks.workloads import Case, Session, percentiles
from benchmarks.writers import WriterProcess, write_commit_log

INSERT = "INSERT INTO outbox.messages (topic, key, payload) VALUES (%s, %s, %s::json)"
SETTLE = 3.0  # seconds after the relay is ready (leases, the first empty polls)
WRITER_RATE = 500.0  # msg/s per writer process, at most
WRITER_NUMBERS = 1_000_000  # event numbers per writer: each writes first_n, first_n + 1, ...


@dataclass(frozen=True)
class LightSettings:
    rates: tuple[float, ...]  # msg/s, one writer
    idle_seconds: float  # the idle window
    min_seconds: float  # the measured window at each rate, at least ...
    min_messages: int  # ... and long enough for this many messages
    warmup: float  # seconds at a rate before its window starts

    def window(self, rate: float) -> float:
        return max(self.min_seconds, self.min_messages / rate)


QUICK_LIGHT = LightSettings((10.0, 100.0, 1000.0), 20.0, 12.0, 250, 3.0)


@dataclass(frozen=True)
class WriterSpec:
    dsn: str
    topic: str
    direct_topic: str  # the bare producer's
    bootstrap: str
    rate: float
    first_n: int
    commit_log: str


def _write(spec: WriterSpec, committed: Any, stopping: Any) -> None:
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": spec.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "lz4",
            "linger.ms": 1,
        }
    )
    pool, n = body_pool(), spec.first_n
    numbers, times = array.array("q"), array.array("d")
    with psycopg.connect(spec.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        next_at = time.monotonic()
        while not stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += 1 / spec.rate
            key, value = event_key(pool, n), event_text(pool, n, time.time())
            conn.execute(INSERT, (spec.topic, key, value), prepare=True)  # one transaction
            done = time.time()
            producer.produce(spec.direct_topic, value.encode(), key.encode())
            producer.poll(0)
            numbers.append(n)
            times.append(done)
            committed.value += 1
            n += 1
    producer.flush(10)
    write_commit_log(spec.commit_log, numbers, times)


def light_writer(spec: WriterSpec) -> WriterProcess:
    """One writer process at one rate; ``stop()`` gives n -> COMMIT time."""
    return WriterProcess(_write, spec, "the light-traffic writer")


def light_traffic(
    stack: Stack, case: Case, logs: Path, settings: LightSettings, *, extra: list[str],
    rates: tuple[float, ...] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Idle, then each rate: one result per window (``rate`` 0 is the idle one)."""
    session = Session(stack, case, logs, extra)
    direct = stack.target("kafka")
    arrivals: dict[str, dict[int, float]] = {"relay": {}, "bare": {}}
    results = []
    try:
        session.start_relay()
        session.wait_ready()
        time.sleep(SETTLE)
        results.append(_idle(session, settings.idle_seconds))
        for path, target in (("relay", session.target), ("bare", direct)):
            target.start_reader(_noting(arrivals[path]))
        first_n = 0
        for rate in rates or settings.rates:
            count = math.ceil(rate / WRITER_RATE)
            specs = [
                WriterSpec(
                    session.dsn, session.target.topic, direct.topic,
                    stack.kafka_bootstrap or "", rate / count, first_n + i * WRITER_NUMBERS,
                    str(logs / f"light-commits-{os.getpid()}-{time.monotonic_ns()}-{i}"),
                )
                for i in range(count)
            ]  # fmt: skip
            results.append(_at_rate(session, rate, specs, settings, arrivals))
            first_n += count * WRITER_NUMBERS
    finally:
        direct.close()
        session.close()
    return results


def _noting(arrivals: dict[int, float]) -> Any:
    return lambda value, at: arrivals.setdefault(orjson.loads(value)["n"], at)


def _idle(session: Session, seconds: float) -> dict[str, Any]:
    a = session.sample()
    time.sleep(seconds)
    session.check_alive()
    b = session.sample()
    return {
        "rate": 0,
        "seconds": round(b.t - a.t, 1),
        "relay_cpu_pct_of_core": round((b.cpu - a.cpu) / (b.t - a.t) * 100, 2),
        "delivered": b.delivered - a.delivered,
    }


def _at_rate(
    session: Session, rate: float, specs: list[WriterSpec], settings: LightSettings,
    arrivals: dict[str, dict[int, float]],
) -> dict[str, Any]:  # fmt: skip
    writers = [light_writer(spec) for spec in specs]

    def committed() -> int:
        return sum(w.committed() for w in writers)

    commits: dict[int, float] = {}
    try:
        wait_until(lambda: all(w.committed() > 0 for w in writers), 30)
        time.sleep(settings.warmup)
        a = session.sample(committed())
        started_wall = time.time()
        time.sleep(settings.window(rate))
        session.check_alive()
        b = session.sample(committed())
        ended_wall = time.time()
    finally:
        for writer in writers:
            commits.update(writer.stop())
    measured = {n: t for n, t in commits.items() if started_wall <= t <= ended_wall}
    wait_until(lambda: all(n in arrivals["relay"] for n in measured), 15, 0.1)
    wait_until(lambda: all(n in arrivals["bare"] for n in measured), 5, 0.1)
    delivered = b.delivered - a.delivered
    figures: dict[str, Any] = {
        "rate": rate,
        "writers": len(writers),
        "seconds": round(b.t - a.t, 1),
        "achieved_write_rate": round((b.committed - a.committed) / (b.t - a.t), 1),
        "delivered": delivered,
        "cpu_us_per_msg": round((b.cpu - a.cpu) / delivered * 1e6, 1) if delivered else None,
        "relay_cpu_pct_of_core": round((b.cpu - a.cpu) / (b.t - a.t) * 100, 2),
        "measured_messages": len(measured),
    }
    for path, prefix in (("relay", ""), ("bare", "bare_")):
        values = sorted((arrivals[path][n] - t) * 1000 for n, t in measured.items()
                        if n in arrivals[path])  # fmt: skip
        figures[f"{prefix}missing"] = len(measured) - len(values)
        figures.update({f"{prefix}{k}": v for k, v in percentiles(values).items()})
    return figures


def run_light(
    stack: Stack, modes: list[str], logs: Path, *, runs: int, extra: list[str], record: Any,
    settings: LightSettings = QUICK_LIGHT, relay_rates: tuple[float, ...] | None = None,
) -> None:  # fmt: skip
    """Each mode of outbox-relay at every rate (or ``relay_rates``), each followed by one
    variant of the minimal relay of that mode (the ceiling) idle and at 100 msg/s, then
    the other variants of the modes run and the tutorial relay likewise, ``runs`` times;
    one record per window through ``record(workload, case, run, measure)``
    (benchmarks.run's), each with the machine's share over the whole session."""
    from benchmarks.processes import MINIMAL_VARIANTS, MachineShare

    minimal = [
        (Case(kind, mode, "kafka"), (100.0,))
        for kind, (mode, _settings, _reports) in MINIMAL_VARIANTS.items()
        if mode in modes
    ]
    cases: list[tuple[Case, tuple[float, ...] | None]] = []
    for mode in modes:  # ours and a minimal relay of its mode alternate: the same minutes
        cases.append((Case("outbox-relay", mode, "kafka"), relay_rates))
        if (ceiling := next((c for c in minimal if c[0].mode == mode), None)) is not None:
            minimal.remove(ceiling)
            cases.append(ceiling)
    cases += minimal
    cases.append((Case("tutorial", "poll", "kafka"), (100.0,)))
    for run in range(1, runs + 1):
        for case, rates in cases:
            print(f"[{time.strftime('%H:%M:%S')}] light {case.label()} run {run} ...", flush=True)
            share = MachineShare()
            share.start()
            windows = light_traffic(stack, case, logs, settings, extra=extra, rates=rates)
            machine = share.stop()
            for window in windows:
                record("light", case, run, lambda w=window, m=machine: {**m, **w})
