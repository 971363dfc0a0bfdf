"""The operability side of one relay: the backlog sampler and the health/metrics server.

The sampler reads the cheap backlog figures (and, in CDC mode, the slot's lag) every few
seconds on a connection of its own, in a thread of its own: a slow or unreachable
database stalls these gauges (``outbox_relay_backlog_sampled_timestamp_seconds`` shows
it) but never the publish path, and the publish path never starves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from relay.breaker import CircuitBreaker
from relay.config import RelayConfig
from relay.health import HealthServer, HealthState
from relay.metrics import RelayMetrics
from relay.status import sample_backlog
from relay.tasks import BackgroundTask, result_within

log = logging.getLogger(__name__)

SAMPLE_EVERY = 5.0
# An outbox whose figures showed nothing pending and no held keys, and of which the relay
# has seen nothing since (SampleTarget.activity), is read this often, not every round.
QUIET_SAMPLE_EVERY = 30.0
# The figures a source adds to the backlog's (CDC: the slot's lag), read on the sampler's
# connection.
SourceFigures = Callable[[psycopg.Connection[Any]], dict[str, Any]]
SAMPLE_STATEMENT_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class SampleTarget:
    """One outbox the sampler reads: its schema, where its figures go, and its source's
    own figures (CDC: the slot's lag)."""

    schema: str
    metrics: RelayMetrics
    health: HealthState
    source_figures: SourceFigures
    # What the relay has seen of the outbox lately (relay.source.Source.activity).
    activity: Callable[[], Hashable | None] = lambda: None


class BacklogSampler:
    """Every ``every`` seconds: pending, oldest age, dead letters, held keys, CDC lag, of
    each outbox it was given (one for a relay of one outbox; in a relay of many, every
    outbox of a database, read in one thread one after another)."""

    def __init__(
        self,
        config: RelayConfig,
        targets: Sequence[SampleTarget] = (),
        every: float = SAMPLE_EVERY,
        connection: SamplerConnection | None = None,
    ) -> None:
        self._owns_connection = connection is None
        self._connection = connection or SamplerConnection(config)
        self._targets = {target.schema: target for target in targets}
        self._every = every
        self._in_flight: asyncio.Future[dict[str, Any]] | None = None
        self._task = BackgroundTask("backlog-sampler", self._run)
        self._failures = 0
        # Outboxes found quiet: their activity then, and when their figures were read.
        self._quiet: dict[str, tuple[Hashable, float]] = {}

    def add(self, target: SampleTarget) -> None:
        self._targets[target.schema] = target
        self._task.start()

    def remove(self, schema: str) -> None:
        self._targets.pop(schema, None)
        self._quiet.pop(schema, None)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()
        if self._owns_connection:
            self._connection.close()

    async def _run(self) -> None:
        while True:
            await self.sample_once()
            await asyncio.sleep(self._every)

    async def sample_once(self) -> None:
        if self._in_flight is not None and not self._in_flight.done():
            return  # the previous sample is still stuck on the database
        targets = list(self._targets.values())
        now = time.monotonic()
        activity = {target.schema: target.activity() for target in targets}
        skipped = {schema for schema, seen in activity.items() if self._still_quiet(
            schema, seen, now)}
        self._in_flight = _in_daemon_thread(lambda: self._read(targets, skipped))
        try:
            # Left running on a timeout: the next round sees it still in flight.
            found = await result_within(self._in_flight, self._every)
        except (TimeoutError, psycopg.Error) as exc:
            self._sample_failed(exc)
            return
        for target in targets:
            figures = found.get(target.schema)
            if isinstance(figures, psycopg.Error):
                self._sample_failed(figures)
            elif figures is not None:
                self._failures = 0
                _publish(target, figures)
                self._note_quiet(target.schema, activity[target.schema], figures, now)

    def _still_quiet(self, schema: str, seen: Hashable | None, now: float) -> bool:
        """Skip this round's backlog statements for ``schema``? Only while nothing the
        relay sees of it changed and its figures were read lately."""
        quiet = self._quiet.get(schema)
        if seen is None or quiet is None:
            return False
        then, read_at = quiet
        return then == seen and now - read_at < QUIET_SAMPLE_EVERY

    def _note_quiet(
        self, schema: str, seen: Hashable | None, figures: dict[str, Any], now: float
    ) -> None:
        if "pending" not in figures:
            return  # skipped this round: it stays as it was
        if seen is not None and figures["pending"] == 0 and figures["held_keys"] == 0:
            self._quiet[schema] = (seen, now)
        else:
            self._quiet.pop(schema, None)

    def _sample_failed(self, exc: BaseException) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "could not read the backlog figures: %s", exc or type(exc).__name__)

    def _read(
        self, targets: Sequence[SampleTarget], skipped: Collection[str] = ()
    ) -> dict[str, Any]:
        """Runs in the sampler's own thread, on its connection: each outbox's figures, or
        the error of its statements (a schema just dropped) while the connection lives.
        Of the ``skipped`` (quiet) ones, only the source's figures (CDC: the slot's lag,
        one read for all the outboxes of a slot)."""
        found: dict[str, Any] = {}
        with self._connection.use() as conn:
            for target in targets:
                try:
                    backlog = {} if target.schema in skipped else sample_backlog(
                        conn, target.schema)
                    found[target.schema] = {**backlog, **target.source_figures(conn)}
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        raise
                    found[target.schema] = exc
        return found


def _publish(target: SampleTarget, figures: dict[str, Any]) -> None:
    m = target.metrics
    if "pending" in figures:  # not for a quiet outbox skipped this round
        m.pending.set(figures["pending"])
        m.oldest_pending_age.set(figures["oldest_pending_age_seconds"] or 0.0)
        m.dead_letters.set(figures["dead_letters"])
        m.held_keys.set(figures["held_keys"])
        m.backlog_sampled.set(time.time())
    if "cdc" in figures:
        cdc = figures["cdc"]
        m.set_cdc_slot_lag(cdc["slot"], cdc["lag_bytes"])
    target.health.database_answered()


class SamplerConnection:
    """The backlog sampler's connection, opened when first used, reopened after a
    failure; in a relay of many outboxes one database's samplers share it, a sample at
    a time."""

    def __init__(self, config: RelayConfig) -> None:
        self._dsn = config.dsn
        self._connect_timeout = config.connect_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            try:
                yield self._connection()
            except psycopg.Error:
                self._close()
                raise

    def close(self) -> None:
        """Close it unless a sample holds it (one stuck on a dead connection: its daemon
        thread ends with the process)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            with contextlib.suppress(Exception):  # closing is best effort
                self._close()
        finally:
            self._lock.release()

    def _close(self) -> None:
        stale, self._conn = self._conn, None
        if stale is not None:
            stale.close()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="outbox-relay/metrics",
            )
            self._conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (str(SAMPLE_STATEMENT_TIMEOUT_MS),),
            )
        return self._conn


def _in_daemon_thread(work: Callable[[], dict[str, Any]]) -> asyncio.Future[dict[str, Any]]:
    """Run ``work`` in a daemon thread: one stuck on a dead connection (a sync libpq call
    has no client-side timeout) must not keep the process from exiting, as an executor's
    threads would."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[dict[str, Any]] = loop.create_future()

    def settle(result: dict[str, Any] | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result or {})

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="backlog-sampler", daemon=True).start()
    return future


class Operability:
    """Starts and stops the sampler and the health/metrics server of one relay."""

    def __init__(
        self,
        config: RelayConfig,
        metrics: RelayMetrics,
        health: HealthState,
        breaker: CircuitBreaker,
        source_figures: SourceFigures,
    ) -> None:
        health.circuit = lambda: breaker.state.value
        self._health = health
        self.sampler = BacklogSampler(
            config, [SampleTarget(config.schema, metrics, health, source_figures)]
        )
        self.server: HealthServer | None = None
        if config.metrics_port:
            self.server = HealthServer(
                config.metrics_host, config.metrics_port, health, metrics.registry
            )

    def start_server(self) -> None:
        """Bind and serve /metrics, /healthz, /readyz; raises when the port is taken."""
        if self.server is not None:
            self.server.start()

    def start(self) -> None:
        self.start_server()  # started already by the relay: harmless
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
