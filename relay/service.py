"""The relay process: preflight, then one source (polling or CDC) behind the connector
stack, beside the metrics and health server, until SIGTERM/SIGINT, then a bounded drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from typing import TYPE_CHECKING

import psycopg

from relay.breaker import BreakerSettings, CircuitBreaker
from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.db import DbSession, connection_failure
from relay.decorators import instrument
from relay.errors import translate_db_error
from relay.formats.connector import format_connector
from relay.health import HealthState
from relay.limits import limit_message_size
from relay.metrics import RelayMetrics
from relay.migrations import require_schema
from relay.operability import Operability
from relay.poll.source import POLL
from relay.privileges import require_privileges
from relay.source import Source, SourceKind, SourceParts
from relay.tasks import Signal, bounded
from relay.tracing import traced

if TYPE_CHECKING:
    from relay.fleet_service import FleetService

log = logging.getLogger(__name__)


def source_kind(mode: str) -> SourceKind:
    """The source of ``mode`` (the name --mode takes). CDC's modules are imported only by
    a CDC relay: a polling relay starts sooner without them."""
    if mode == "cdc":
        from relay.cdc.relay import CDC

        return CDC
    return POLL


# Tracked objects the heap may gain before the youngest generation is collected (Python's
# default is 700). A drain holds a few batches of messages at once, tens of thousands of
# objects that refcounting frees when their batch is confirmed; at 700 the collector
# walked them every few hundred messages, and its older generations walked the whole
# heap, for cycles the hot path does not make.
YOUNG_GENERATION_THRESHOLD = 50_000


def preflight(config: RelayConfig) -> None:
    """Fail fast, with one clear sentence, when the database or schema is not usable."""
    try:
        conn = psycopg.connect(
            config.dsn, connect_timeout=max(1, round(config.connect_timeout)), autocommit=True
        )
    except psycopg.Error as exc:
        raise connection_failure(config.dsn, exc) from None
    with conn:
        try:
            require_privileges(conn, config.schema, config.mode)
            require_schema(conn, config.schema)
        except psycopg.Error as exc:
            raise translate_db_error(exc, f"checking outbox schema {config.schema!r}") from None
    source_kind(config.mode).preflight(config)


class RelayService:
    """Owns every long-running piece of one relay process."""

    def __init__(self, config: RelayConfig, connector: Connector | None = None) -> None:
        self.config = config
        self.relay_id = uuid.uuid4()
        self.metrics = RelayMetrics()
        self.health = HealthState(db_stale_after=max(30.0, 2 * config.lease_ttl))
        self.breaker = CircuitBreaker(
            f"{config.connector}",
            BreakerSettings.for_retries(config.retry_base, config.retry_cap),
        )
        # Size limit, then tracing, innermost: both see the message as it goes on the
        # wire, after the topic template and the envelope (relay.formats).
        limited = limit_message_size(connector or load_connector(config), config.max_message_bytes)
        self.connector = instrument(
            format_connector(traced(limited, config), config), self.breaker, self.metrics
        )
        self.stopping = Signal()
        self.sessions: list[DbSession] = []
        self.source: Source = source_kind(config.mode).build(
            SourceParts(
                config=config,
                connector=self.connector,
                relay_id=self.relay_id,
                metrics=self.metrics,
                health=self.health,
                keep_session=self._kept,
            )
        )
        self.operability = Operability(
            config, self.metrics, self.health, self.breaker, self.source.sample
        )
        self.metrics.describe(relay=config.relay_name, mode=config.mode, connector=config.connector)
        self.metrics.watch_sessions(lambda: self.sessions)

    def _kept(self, session: DbSession) -> DbSession:
        self.sessions.append(session)
        return session

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the batch in flight, then releasing leases")
        self.stopping.set()

    async def run(self) -> None:
        """Run until :meth:`request_stop`; drains within the shutdown timeout."""
        self.operability.start_server()  # a taken --metrics-port fails before anything else
        try:
            await self.connector.open()
        except BaseException:
            await self.operability.stop()
            raise
        log.info(
            "relay %s started (%s, connector %s)",
            self.config.relay_name,
            self.config.mode,
            self.connector.name,
        )
        self.operability.start()
        drain = asyncio.create_task(self.source.run(self.stopping), name=self.config.mode)
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown(drain)

    async def _shutdown(self, drain: asyncio.Task[None]) -> None:
        self.stopping.set()
        done, _ = await asyncio.wait({drain}, timeout=self.config.shutdown_timeout)
        if not done:
            log.warning(
                "the batch in flight did not finish within %.0fs; it will be retried",
                self.config.shutdown_timeout,
            )
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
        # Each step is bounded: a database or broker that stopped answering cannot keep
        # the process from exiting (leases it fails to release expire after the TTL).
        step = max(1.0, self.config.shutdown_timeout / 3)
        await self.source.close(timeout=step)
        await bounded(self.operability.stop(), step, "metrics")
        await bounded(
            self.connector.close(timeout=self.config.shutdown_timeout),
            self.config.shutdown_timeout + 1,
            "connector",
        )
        log.info("relay stopped; %d messages published", self.source.published)


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path of a long-running relay.

    What exists once the relay is built (modules, configuration, the connector) lives as
    long as the process: frozen, the collector no longer walks it. The young generation
    is collected when the heap has grown by ``YOUNG_GENERATION_THRESHOLD`` objects, not
    700, so the messages of the batches in flight are no longer walked over and over.
    Cycles (a stored exception and its traceback) are still collected, just later."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, old)


async def run_service(config: RelayConfig) -> None:
    """Run a relay in this process with SIGTERM/SIGINT wired to a graceful stop."""
    service: RelayService | FleetService
    if config.many_outboxes:
        from relay.fleet_service import FleetService

        service = FleetService(config)
    else:
        service = RelayService(config)
    tune_garbage_collector()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.request_stop)
    await service.run()
