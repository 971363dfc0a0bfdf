"""The relay process: preflight, then the poller, lease keeper, wake-up listener and
retention running side by side until SIGTERM/SIGINT, then a bounded drain."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import uuid

import psycopg

from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.db import DbSession, connection_failure
from relay.errors import ConfigError
from relay.housekeeping import RetentionTask
from relay.leases import LeaseKeeper
from relay.listener import WakeListener
from relay.migrations import require_schema
from relay.poller import Poller, claim_session

log = logging.getLogger("outbox_relay")

RETENTION_EVERY = 10.0


def preflight(config: RelayConfig) -> None:
    """Fail fast, with one clear sentence, when the database or schema is not usable."""
    try:
        with psycopg.connect(
            config.dsn, connect_timeout=max(1, round(config.connect_timeout)), autocommit=True
        ) as conn:
            require_schema(conn, config.schema)
    except psycopg.Error as exc:
        raise connection_failure(config.dsn, exc) from None


def duty_session(config: RelayConfig, duty: str) -> DbSession:
    """A connection for one background duty; statements end within a lease TTL."""
    return DbSession(
        config.dsn,
        duty,
        connect_timeout=config.connect_timeout,
        settings={"statement_timeout": str(int(config.lease_ttl * 1000))},
    )


class RelayService:
    """Owns every long-running piece of one relay process."""

    def __init__(self, config: RelayConfig, connector: Connector | None = None) -> None:
        if config.mode != "poll":
            raise ConfigError(f"mode {config.mode!r} is not available in this version")
        self.config = config
        self.relay_id = uuid.uuid4()
        self.connector = connector or load_connector(config)
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        session = functools.partial(duty_session, config)
        self.leases = LeaseKeeper(
            session("leases"),
            schema=config.schema,
            relay_id=self.relay_id,
            relay_name=config.relay_name,
            mode=config.mode,
            ttl=config.lease_ttl,
            on_change=self.wake.set,
            published=lambda: self.poller.stats.published,
        )
        self.poller = Poller(
            config, claim_session(config), self.connector, self.leases, self.relay_id, self.wake
        )
        self.listener = WakeListener(session("listen"), config.schema, self.wake)
        self.retention = RetentionTask(
            session("housekeeping"), config.schema, config.retention, RETENTION_EVERY
        )

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the batch in flight, then releasing leases")
        self.stopping.set()

    async def run(self) -> None:
        """Run until :meth:`request_stop`; drains within the shutdown timeout."""
        await self.connector.open()
        log.info(
            "relay %s started (%s, connector %s)",
            self.config.relay_name,
            self.config.mode,
            self.connector.name,
        )
        self.leases.start()
        self.listener.start()
        self.retention.start()
        drain = asyncio.create_task(self.poller.run(self.stopping), name="poller")
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
        await self.listener.stop()
        await self.retention.stop()
        await self.leases.stop()
        await self.poller.close()
        await self.connector.close(timeout=self.config.shutdown_timeout)
        log.info("relay stopped; %d messages published", self.poller.stats.published)


async def run_service(config: RelayConfig) -> None:
    """Run a relay in this process with SIGTERM/SIGINT wired to a graceful stop."""
    service = RelayService(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, service.request_stop)
    await service.run()
