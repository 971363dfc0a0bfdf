"""Many outboxes in one relay process: one source per outbox, one connector for all.

Each outbox (a database and a schema, relay.outboxes) gets what a relay of one outbox
has: its own source (leases and lanes, or a slot), metrics, health and backlog sampler,
so every guarantee holds per outbox and one outbox's trouble stays its own. What they
share is the broker side: one producer, one circuit breaker. An outbox that cannot
start (its database down, its schema not migrated) waits and tries again on its own
backoff while the others drain (docs/multi-tenant.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from prometheus_client import CollectorRegistry

from relay.backoff import full_jitter
from relay.breaker import CircuitBreaker
from relay.config import RelayConfig
from relay.connector import Connector
from relay.db import DbSession
from relay.decorators import PublishStack, instrument
from relay.errors import RelayError
from relay.fleet_health import OutboxProbe
from relay.health import HealthState
from relay.logs import CURRENT_OUTBOX
from relay.metrics import RelayMetrics
from relay.operability import BacklogSampler, SampleTarget
from relay.outboxes import OutboxAddress
from relay.source import DatabaseShare, Source, SourceKind, SourceParts
from relay.tasks import BackgroundTask, Signal, bounded, wait_any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shared:
    """What every outbox of the process shares."""

    stack: Connector  # the formatted, size-limited connector, opened once by the process
    breaker: CircuitBreaker
    relay_id: UUID
    kind: SourceKind
    preflight: Callable[[RelayConfig], None]  # blocking: run in a thread
    # Each outbox's way to ``stack``: CDC outboxes hand their batches in together
    # (relay.publish_together); otherwise ``stack`` itself.
    outbox_stack: Callable[[], Connector] | None = None


class Database:
    """What the outboxes of one database share: the mode's share (polling: duty
    sessions, the listener, a claim pool) and the backlog sampler, which reads them in turn."""

    def __init__(self, config: RelayConfig, kind: SourceKind) -> None:
        self.share: DatabaseShare | None = kind.share(config) if kind.share else None
        self.sampler = BacklogSampler(config)  # every outbox of the database, in turn

    async def close(self) -> None:
        if self.share is not None:
            await self.share.close()
        await self.sampler.stop()


class OutboxRunner:
    """One outbox: checks it can start, then runs its source until told to stop, and
    starts it again after a failure, with backoff, without touching the other outboxes."""

    def __init__(
        self,
        config: RelayConfig,
        address: OutboxAddress,
        shared: Shared,
        database: Database,
        *,
        named: bool,
    ) -> None:
        self.address = address
        self.database = database
        self.named = named  # given outright, not found by --schema-pattern: never let go
        self.config = config.for_outbox(address)
        self._shared = shared
        self.metrics = RelayMetrics(CollectorRegistry(auto_describe=True))
        self.health = HealthState(db_stale_after=max(30.0, 2 * config.lease_ttl))
        self.health.circuit = lambda: shared.breaker.state.value
        own = shared.outbox_stack() if shared.outbox_stack else shared.stack
        self.connector: PublishStack = instrument(own, shared.breaker, self.metrics)
        self.metrics.describe(
            relay=config.relay_name, mode=config.mode, connector=shared.stack.name
        )
        self.sessions: list[DbSession] = []
        self.metrics.watch_sessions(lambda: self.sessions)
        self.source: Source | None = None
        self.problem: str | None = "starting"
        self.published_before = 0  # by the sources this runner ran and closed
        self.stopping = Signal()
        self._task = BackgroundTask(f"outbox {address.name}", self._run)

    @property
    def probe(self) -> OutboxProbe:
        return OutboxProbe(
            self.address.database,
            self.address.schema,
            self.health,
            self.metrics.registry,
            lambda: self.problem,
        )

    @property
    def published(self) -> int:
        return self.published_before + (self.source.published if self.source else 0)

    @property
    def started(self) -> bool:
        return self._task.running

    def start(self) -> None:
        self._task.start()

    async def stop(self, timeout: float) -> None:
        """Finish the batch in flight within ``timeout``, then release what it holds."""
        named = CURRENT_OUTBOX.set(self.address.name)  # its lines while stopping, too
        try:
            await self._stop(timeout)
        finally:
            CURRENT_OUTBOX.reset(named)

    async def _stop(self, timeout: float) -> None:
        self.stopping.set()
        done = await self._task.finished(timeout)
        if not done:
            log.warning(
                "the batch in flight did not finish within %.0fs; it will be retried", timeout
            )
            await self._task.stop()
        await self._close_source(max(1.0, timeout / 3))

    async def _run(self) -> None:
        CURRENT_OUTBOX.set(self.address.name)  # this task's context: its lines name it
        failures = 0
        while not self.stopping.is_set():
            if not await self._preflight(failures):
                failures += 1
                continue
            failures = 0
            self.problem = None
            if await self._drain():
                return
            failures += 1
            await self._pause(failures)

    async def _preflight(self, failures: int) -> bool:
        try:
            await asyncio.to_thread(self._shared.preflight, self.config)
        except RelayError as exc:
            self._set_problem(str(exc))
            await self._pause(failures)
            return False
        self.health.forget("start")  # the source's loops promise their own beats now
        if failures:
            log.info("ready again; draining")
        return True

    async def _drain(self) -> bool:
        """Run a source until stopped (True) or until it fails (False)."""
        self.source = self._shared.kind.build(
            SourceParts(
                config=self.config,
                connector=self.connector,
                relay_id=self._shared.relay_id,
                metrics=self.metrics,
                health=self.health,
                keep_session=self._kept,
                database=self.database.share,
            )
        )
        sampled = SampleTarget(self.address.schema, self.metrics, self.health, self.source.sample,
                               self.source.activity)
        self.database.sampler.add(sampled)
        try:
            await self.source.run(self.stopping)
            return True
        except Exception as exc:  # a bug or a permanent error: this outbox only
            log.exception("stopped draining this outbox")
            self._set_problem(f"{type(exc).__name__}: {exc}")
            await self._close_source(self.config.shutdown_timeout / 3)
            return False
        finally:
            self.database.sampler.remove(self.address.schema)

    async def _close_source(self, timeout: float) -> None:
        source, self.source = self.source, None
        if source is not None:
            self.published_before += source.published
            await source.close(timeout=timeout)
        self.sessions.clear()

    async def _pause(self, failures: int) -> None:
        delay = full_jitter(failures, base=self.config.retry_base, cap=self.config.retry_cap)
        self.health.beat(delay + self.config.connect_timeout + 1, "start")
        await wait_any(self.stopping, timeout=delay)

    def _set_problem(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("cannot drain this outbox: %s; trying again", problem)
        self.problem = problem

    def _kept(self, session: DbSession) -> DbSession:
        self.sessions.append(session)
        return session


async def stop_all(runners: list[OutboxRunner], timeout: float) -> None:
    await asyncio.gather(*(bounded(r.stop(timeout), timeout * 2, r.address.name) for r in runners))
