"""The workloads: backlog drain, sustained throughput with writers, latency, soak.

Each function runs one relay (``kind`` "outbox-relay" or "naive") against a fresh
database and a fresh topic, and returns one flat dict of figures. Time comes from
``time.monotonic()``, CPU and memory from the relay process's own /proc accounting,
deliveries from the broker (a consumer for Kafka, the queue depth for RabbitMQ).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from benchmarks import report
from benchmarks.processes import (
    CONFIRM_HISTOGRAM,
    MINIMAL_VARIANTS,
    RelayProcess,
    confirmed_by_naive,
    confirmed_by_relay,
    histogram_quantiles,
    minimal_argv,
    naive_argv,
    relay_argv,
    relay_histogram,
    supports_flag,
    tutorial_argv,
)
from benchmarks.ramp import Ramp, StepResult, step_verdict
from benchmarks.stack import Stack, Target, drop_database, fresh_database, wait_until
from benchmarks.writers import Writers, preload, read_commit_log
from tests.support.services import free_port

# The baselines, which count their broker confirms in a file (outbox-relay: its metrics).
BASELINES = ("naive", "tutorial", *MINIMAL_VARIANTS)
SAMPLE_EVERY = 0.04  # each sample reads the relay's /metrics: keep its cost below 1 %
VERIFY_UP_TO = 200_000  # beyond this, reading the topic back takes Tansu minutes
READY_TIMEOUT = 30.0


@dataclass(frozen=True)
class Case:
    """What runs: which relay, in which mode, to which broker."""

    kind: str  # "outbox-relay", or a baseline: "tutorial" or "naive"
    mode: str  # "poll" or "cdc"
    broker: str  # "kafka" or "rabbitmq"

    def label(self) -> str:
        return f"{self.kind}/{self.mode}/{self.broker}"


@dataclass
class Sample:
    t: float
    delivered: int
    committed: int
    cpu: float
    rss: float


class Session:
    """One relay process on one fresh database and target, with sampling helpers."""

    def __init__(self, stack: Stack, case: Case, logs: Path, extra: list[str]) -> None:
        self.case = case
        self._stack = stack
        self.dsn = fresh_database(stack.pg)
        self.target: Target = stack.target(case.broker)
        self._logs = logs
        self._extra = extra
        self.relay: RelayProcess | None = None
        self.hwm_mb = 0.0
        # every relay counts broker confirms itself (outbox-relay in its metrics, the
        # baselines in a file): cheap to read, and no consumer loads the broker meanwhile
        self._metrics_port = free_port() if case.kind not in BASELINES else 0
        self._by_relay = bool(self._metrics_port and supports_flag("--metrics-port"))
        self._progress = logs / f"{case.kind}-progress-{self.dsn.rpartition('/')[2]}"
        self._last_confirmed = 0

    def argv(self) -> list[str]:
        if self.case.kind in BASELINES:
            self._progress.unlink(missing_ok=True)
            if self.case.kind in MINIMAL_VARIANTS:
                return minimal_argv(
                    self.case.kind, self.dsn, self.target.relay_args(), self._progress
                )
            argv = tutorial_argv if self.case.kind == "tutorial" else naive_argv
            return argv(self.dsn, self.target.relay_args(), self._progress)
        return relay_argv(
            self.case.mode, self.dsn, self.target.relay_args(), self._extra, self._metrics_port
        )

    def delivered(self) -> int:
        """Messages confirmed by the broker so far (by the running relay's own count)."""
        if self.case.kind in BASELINES:
            confirmed = confirmed_by_naive(self._progress)
        elif self._by_relay:
            confirmed = confirmed_by_relay(self._metrics_port)
        else:
            return self.target.delivered()
        if confirmed is not None:  # None: its metrics server is not up yet
            self._last_confirmed = confirmed
        return self._last_confirmed

    def histogram(self, name: str) -> dict[float, float]:
        """One of the running relay's histograms (empty without a metrics server)."""
        return relay_histogram(self._metrics_port, name) if self._by_relay else {}

    def verify_at_broker(self, expected: int, timeout: float) -> int | None:
        """What the broker itself holds, read once the run is over; None when reading it
        back took longer than ``timeout`` (Tansu serves a topic of many one-message batches,
        as the naive relay writes them, very slowly)."""
        if wait_until(lambda: self.target.delivered() >= expected, timeout, 0.2):
            return self.target.delivered()
        return None

    def start_relay(self) -> float:
        """Start the relay; return its start time."""
        started = time.monotonic()
        self.relay = RelayProcess(self.case.kind, self.argv(), self._logs)
        return started

    def wait_ready(self) -> None:
        assert self.relay is not None
        if not wait_until(lambda: self._ready() or not self.relay.alive(), READY_TIMEOUT):
            raise RuntimeError(f"{self.case.label()} not ready:\n{self.relay.log_tail()}")
        self.check_alive()

    def _ready(self) -> bool:
        if self.case.mode == "cdc":  # outbox-relay's or the minimal relay's slot
            sql = (
                "SELECT count(*) FROM pg_replication_slots"
                " WHERE database = current_database() AND active"
            )
        elif self.case.kind in MINIMAL_VARIANTS:  # it registers once it listens
            sql = "SELECT count(*) FROM outbox.relays WHERE name = 'minimal-relay'"
        elif self.case.kind in BASELINES:
            return True
        else:
            sql = "SELECT count(*) FROM outbox.bucket_leases WHERE expires_at > now()"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql).fetchone()
        return bool(row and row[0])

    def check_alive(self) -> None:
        assert self.relay is not None
        if not self.relay.alive():
            raise RuntimeError(f"{self.case.label()} exited:\n{self.relay.log_tail()}")

    def sample(self, committed: int = 0) -> Sample:
        assert self.relay is not None
        usage = self.relay.usage()
        self.hwm_mb = max(self.hwm_mb, usage.hwm_mb)
        return Sample(
            time.monotonic(), self.delivered(), committed, usage.cpu_seconds, usage.rss_mb
        )

    def stop_relay(self) -> None:
        self._last_confirmed = 0  # the next relay process counts from zero
        if self.relay is not None:
            if self.relay.alive():
                self.hwm_mb = max(self.hwm_mb, self.relay.usage().hwm_mb)
            self.relay.stop()
            self.relay = None

    def close(self) -> None:
        try:
            self.stop_relay()
            self.target.close()
        finally:
            drop_database(self._stack.pg, self.dsn)

    def prepare_cdc_slot(self) -> None:
        """CDC replays from its slot: create the slot first, so the backlog goes through
        the WAL (as after an outage) rather than a snapshot."""
        if self.case.mode == "cdc":
            self.start_relay()
            self.wait_ready()
            self.stop_relay()


def _rate(a: Sample, b: Sample) -> float:
    return (b.delivered - a.delivered) / max(b.t - a.t, 1e-9)


def _cpu_us(a: Sample, b: Sample) -> float | None:
    count = b.delivered - a.delivered
    return (b.cpu - a.cpu) / count * 1e6 if count > 0 else None


# --- backlog drain -------------------------------------------------------------------------


def drain(
    stack: Stack, case: Case, logs: Path, *, messages: int, limit: float, extra: list[str]
) -> dict[str, Any]:
    """Preload ``messages`` events with the relay down, start it, time until the broker
    has them all (or ``limit`` seconds pass: the naive relay is measured over a window)."""
    session = Session(stack, case, logs, extra)
    try:
        session.prepare_cdc_slot()
        preload_seconds = preload(session.dsn, session.target.topic, messages)
        load = os.getloadavg()[0]
        started = session.start_relay()
        samples = [session.sample()]
        while samples[-1].delivered < messages and time.monotonic() - started < limit:
            session.check_alive()
            time.sleep(SAMPLE_EVERY)
            samples.append(session.sample())
        session.stop_relay()
        at_broker = None
        if messages <= VERIFY_UP_TO:
            at_broker = session.verify_at_broker(samples[-1].delivered, 30)
    finally:
        session.close()
    first = next((s for s in samples if s.delivered > 0), samples[-1])
    last = samples[-1]
    rss_curve = [(s.delivered, round(s.rss, 1)) for s in samples[:: max(1, len(samples) // 40)]]
    return {
        "messages": messages,
        "delivered": last.delivered,
        "complete": last.delivered >= messages,
        "counted_at_broker": at_broker,
        "msg_per_s": round(_rate(first, last)),
        # startup counts: from the start of the process to the last confirm
        "msg_per_s_from_start": round(last.delivered / max(last.t - started, 1e-9)),
        "seconds_to_all_confirmed": round(last.t - started, 3),
        "startup_seconds": round(first.t - started, 3),
        "cpu_us_per_msg": _round(_cpu_us(first, last)),
        "peak_rss_mb": round(session.hwm_mb, 1),
        "rss_mb_by_delivered": rss_curve,
        "preload_seconds": round(preload_seconds, 2),
        "loadavg_1m_before": round(load, 2),
    }


# --- sustained throughput with writers -----------------------------------------------------


def sustained_rates(ramp: tuple[float, ...], case: Case, drain_rate: float | None) -> list[float]:
    """The rates a sustained run offers: fractions of the drain rate, and the target's."""
    base = drain_rate or (1000.0 if case.kind == "naive" else 10_000.0)
    rates = [max(100.0, round(base * f, -2)) for f in ramp]
    goal = report.SUSTAINED_GOALS.get((case.mode, case.broker))
    if case.kind == "outbox-relay" and goal is not None:
        # Offer the target's own rate too: a ramp of fractions of the drain rate can step
        # from just below it to far above it, and then the run cannot say if it is met.
        rates = sorted({*rates, float(goal)})
    return rates


def sustained(
    stack: Stack,
    case: Case,
    logs: Path,
    *,
    rates: list[float],
    step: float,
    bisect: int,
    writers: int,
    rows_per_tx: int,
    extra: list[str],
) -> dict[str, Any]:
    """Offer rising write rates; the result is the highest rate whose backlog stayed flat."""
    session = Session(stack, case, logs, extra)
    ramp = Ramp(list(rates), bisect)
    try:
        session.start_relay()
        session.wait_ready()
        base = 0
        while (rate := ramp.next_rate()) is not None:
            result, base = _one_step(session, rate, step, writers, rows_per_tx, base)
            ramp.record(result)
            if not wait_until(lambda base=base: session.delivered() >= base, 60, 0.2):
                break  # could not even drain what was written: no point going further
    finally:
        session.close()
    best = ramp.best()
    return {
        "max_sustained_msg_per_s": round(ramp.passed),
        # where the relay fell behind (at the rate the writers reached), None if nowhere
        "failed_msg_per_s": None if ramp.failed is None else round(ramp.failed),
        "writer_limited": any(s.writer_limited for s in ramp.steps),
        # the figure is what the writers reached, not where the relay fell behind
        "lower_bound": bool(best and best.writer_limited),
        "cpu_us_per_msg": best.cpu_us_per_msg if best else None,
        "peak_rss_mb": round(session.hwm_mb, 1),
        "writers": writers,
        "rows_per_tx": rows_per_tx,
        "step_seconds": step,
        "steps": [s.as_dict() for s in ramp.steps],
    }


def _one_step(
    session: Session, rate: float, seconds: float, count: int, rows_per_tx: int, base: int
) -> tuple[StepResult, int]:
    writers = Writers(
        session.dsn,
        session.target.topic,
        rate=rate,
        count=count,
        rows_per_tx=rows_per_tx,
        first_n=base * 10,
    )
    writers.start()
    wait_until(lambda: writers.committed() > 0, 30)
    samples: list[Sample] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            session.check_alive()
            samples.append(session.sample(base + writers.committed()))
            time.sleep(0.1)
    finally:
        writers.stop()
    committed = base + writers.committed()
    half = samples[len(samples) // 3 :]  # skip the ramp-up of writers and relay
    a, b = half[0], half[-1]
    backlog = [s.committed - s.delivered for s in half]
    slope = statistics.linear_regression([s.t for s in half], backlog).slope
    write_rate = (b.committed - a.committed) / (b.t - a.t)
    kept_up, writer_limited = step_verdict(rate, write_rate, backlog[-1], slope)
    return StepResult(
        rate,
        write_rate,
        _rate(a, b),
        slope,
        backlog[-1],
        _cpu_us(a, b),
        b.rss,
        kept_up,
        writer_limited,
    ), committed


# --- latency ---------------------------------------------------------------------------------


def latency(
    stack: Stack,
    case: Case,
    logs: Path,
    *,
    rate: float,
    seconds: float,
    warmup: float,
    extra: list[str],
) -> dict[str, Any]:
    """One writer commits single-event transactions at ``rate``; a consumer notes when each
    arrives. Latency = arrival at the consumer - the writer's COMMIT returning."""
    session = Session(stack, case, logs, extra)
    arrivals: dict[int, float] = {}

    def arrived(value: bytes, at: float) -> None:
        arrivals.setdefault(orjson.loads(value)["n"], at)

    commit_log = str(logs / f"commits-{os.getpid()}-{time.monotonic_ns()}")
    try:
        session.start_relay()
        session.wait_ready()
        session.target.start_reader(arrived)
        writers = Writers(
            session.dsn,
            session.target.topic,
            rate=rate,
            count=1,
            rows_per_tx=1,
            commit_log=commit_log,
        )
        writers.start()
        wait_until(lambda: writers.committed() > 0, 30)
        time.sleep(warmup)
        a = session.sample(writers.committed())
        confirms_before = session.histogram(CONFIRM_HISTOGRAM)
        time.sleep(seconds)
        b = session.sample(writers.committed())
        by_relay = histogram_quantiles(confirms_before, session.histogram(CONFIRM_HISTOGRAM))
        writers.stop()
        total = writers.committed()
        wait_until(lambda: len(arrivals) >= total, 15)
    finally:
        session.close()
    commits = {}
    for path in writers.commit_logs:
        commits.update(read_commit_log(path))
        Path(path).unlink(missing_ok=True)
    cutoff = min(commits.values(), default=0.0) + warmup
    measured = [(n, t) for n, t in commits.items() if t >= cutoff]
    values = sorted((arrivals[n] - t) * 1000 for n, t in measured if n in arrivals)
    return {
        "rate": rate,
        "achieved_write_rate": round((b.committed - a.committed) / (b.t - a.t)),
        "measured_messages": len(measured),
        "missing": len(measured) - len(values),
        **percentiles(values),
        "cpu_us_per_msg": _round(_cpu_us(a, b)),
        "peak_rss_mb": round(session.hwm_mb, 1),
        # The relay's own view (created_at to confirm, bucket bounds): what the consumer
        # adds on top of it is the broker's delivery, not the relay.
        "confirm_p50_ms": by_relay["p50_ms"],
        "confirm_p99_ms": by_relay["p99_ms"],
        "latencies_ms": [round(v, 3) for v in values],
    }


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 2)

    return {
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": round(values[-1], 2),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
