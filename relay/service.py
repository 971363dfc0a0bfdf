"""The relay process: preflight, then the poller, lease keeper, wake-up listener and
retention running side by side until SIGTERM/SIGINT, then a bounded drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any

import psycopg

from relay.breaker import BreakerSettings, CircuitBreaker
from relay.cdc.preflight import require_ready
from relay.cdc.relay import CdcRelay
from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.db import INDEX_PLAN_SETTINGS, DbSession, connection_failure
from relay.decorators import instrument
from relay.errors import translate_db_error
from relay.health import HealthState
from relay.limits import limit_message_size
from relay.metrics import RelayMetrics
from relay.migrations import require_schema
from relay.operability import Operability
from relay.poll.leases import LeaseKeeper
from relay.poll.listener import WakeListener
from relay.poll.poller import Poller, PollerStats, claim_session
from relay.poll.retention import RetentionTask
from relay.poll.wakeups import WakeupSwitch
from relay.privileges import require_privileges

log = logging.getLogger("outbox_relay")

RETENTION_EVERY = 10.0
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
    if config.mode == "cdc":
        require_ready(config)


def duty_session(
    config: RelayConfig, duty: str, settings: Mapping[str, str] | None = None
) -> DbSession:
    """A connection for one background duty; statements end within a lease TTL."""
    return DbSession(
        config.dsn,
        duty,
        connect_timeout=config.connect_timeout,
        settings={"statement_timeout": str(int(config.lease_ttl * 1000)), **(settings or {})},
    )


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
        self.connector = instrument(
            limit_message_size(connector or load_connector(config), config.max_message_bytes),
            self.breaker,
            self.metrics,
        )
        self.stopping = asyncio.Event()
        # One wake-up event per lane, so a lane clearing its own cannot swallow another's.
        self.wakeups = [asyncio.Event() for _ in range(config.claim_lanes)]
        self.poll_stats = PollerStats()
        self.sessions: list[DbSession] = []

        def session(duty: str, settings: Mapping[str, str] | None = None) -> DbSession:
            return self._kept(duty_session(config, duty, settings))

        self.leases = LeaseKeeper(
            session("leases"),
            schema=config.schema,
            relay_id=self.relay_id,
            relay_name=config.relay_name,
            mode=config.mode,
            ttl=config.lease_ttl,
            on_change=self.wake,
            published=lambda: self.poll_stats.published,
        )
        self.wakeup_switch = WakeupSwitch(
            config.schema, self.relay_id, config.claim_lanes, on_quiet=self.wake
        )
        self.pollers = [self._poller(lane) for lane in range(config.claim_lanes)]
        self.operability = Operability(
            config, self.metrics, self.health, self.breaker, lambda: len(self.leases.owned)
        )
        self.metrics.describe(relay=config.relay_name, mode=config.mode, connector=config.connector)
        self.metrics.watch_sessions(lambda: self.sessions)
        self.listener = WakeListener(
            session("listen"), config.schema, self.wake, coalesce=config.poll_linger
        )
        self.retention = RetentionTask(
            session("housekeeping", INDEX_PLAN_SETTINGS),
            config.schema,
            config.retention,
            RETENTION_EVERY,
        )
        self.cdc = (
            CdcRelay(config, self.connector, relay_id=self.relay_id)
            if config.mode == "cdc"
            else None
        )

    def _kept(self, session: DbSession) -> DbSession:
        self.sessions.append(session)
        return session

    def _poller(self, lane: int) -> Poller:
        return Poller(
            self.config,
            self._kept(claim_session(self.config, lane)),
            self.connector,
            self.leases,
            self.relay_id,
            self.wakeups[lane],
            breaker=self.breaker,
            metrics=self.metrics,
            health=self.health,
            lane=lane,
            stats=self.poll_stats,
            switch=self.wakeup_switch,
        )

    def wake(self) -> None:
        """A NOTIFY or a lease change: every lane looks for work."""
        for wakeup in self.wakeups:
            wakeup.set()

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
        self.retention.start()
        if self.cdc is not None:
            drain = asyncio.create_task(self.cdc.run(self.stopping), name="cdc")
            self.operability.watch(drain)  # /healthz: the loop answers and the stream runs
        else:
            self.leases.start()
            self.listener.start()
            drain = asyncio.create_task(self._run_lanes(), name="poller")
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
        for what, stop in (
            ("listener", self.listener.stop),
            ("retention", self.retention.stop),
            ("lease keeper", self.leases.stop),
            ("poller", self._close_lanes),
            ("metrics", self.operability.stop),
        ):
            await _bounded(stop(), step, what)
        if self.cdc is not None:
            await _bounded(self.cdc.close(), step, "cdc")
        await _bounded(
            self.connector.close(timeout=self.config.shutdown_timeout),
            self.config.shutdown_timeout + 1,
            "connector",
        )
        published = self.cdc.stats.published if self.cdc else self.poll_stats.published
        log.info("relay stopped; %d messages published", published)

    async def _run_lanes(self) -> None:
        await asyncio.gather(*(poller.run(self.stopping) for poller in self.pollers))

    async def _close_lanes(self) -> None:
        await asyncio.gather(*(poller.close() for poller in self.pollers))


async def _bounded(step: Coroutine[Any, Any, None], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            await step
    except TimeoutError:
        log.warning("stopping the %s took over %.0fs; going on without it", what, timeout)


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
    service = RelayService(config)
    tune_garbage_collector()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.request_stop)
    await service.run()
