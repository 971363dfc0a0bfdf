"""The relay process when it drains several outboxes (``--dsn``/``--schema`` given more
than once, or ``--schema-pattern``): one connector, one probe and metrics server, and an
``OutboxRunner`` per outbox (relay.fleet), found again every ``--discover-every`` when a
pattern selects them, until SIGTERM/SIGINT, then a bounded drain of every outbox.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

import psycopg
from prometheus_client import CollectorRegistry

from relay.breaker import BreakerSettings, CircuitBreaker
from relay.config import RelayConfig
from relay.connector import Connector, load_connector
from relay.db import connection_failure
from relay.fleet import Database, OutboxRunner, Shared, stop_all
from relay.fleet_health import FleetHealth, LabelledOutboxMetrics, OutboxProbe
from relay.formats.connector import format_connector
from relay.health import HealthServer
from relay.limits import limit_message_size
from relay.outboxes import OutboxAddress, database_labels, outbox_addresses, schemas_like
from relay.publish_together import PublishTogether
from relay.service import preflight, source_kind
from relay.tasks import BackgroundTask, Signal, bounded, wait_any
from relay.tracing import traced

log = logging.getLogger(__name__)


class FleetService:
    """Owns every long-running piece of a relay process that drains many outboxes."""

    def __init__(self, config: RelayConfig, connector: Connector | None = None) -> None:
        self.config = config
        breaker = CircuitBreaker(
            config.connector, BreakerSettings.for_retries(config.retry_base, config.retry_cap)
        )
        limited = limit_message_size(connector or load_connector(config), config.max_message_bytes)
        stack = format_connector(traced(limited, config), config)
        together = PublishTogether(stack) if config.mode == "cdc" else None
        self.shared = Shared(
            stack=together or stack,
            outbox_stack=together.member if together else None,
            breaker=breaker,
            relay_id=uuid.uuid4(),
            kind=source_kind(config.mode),
            preflight=preflight,
        )
        self.runners: dict[OutboxAddress, OutboxRunner] = {}
        self.databases: dict[str, Database] = {}  # by DSN
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(LabelledOutboxMetrics(self.probes))
        self.health = FleetHealth(self.probes)
        self.server: HealthServer | None = None
        if config.metrics_port:
            self.server = HealthServer(
                config.metrics_host, config.metrics_port, self.health, self.registry
            )
        self._labels = dict(zip(config.databases, database_labels(config.databases), strict=True))
        self._lookup_failures: dict[str, str] = {}
        self._discovery = BackgroundTask("outbox-discovery", self._discover_forever)
        self.stopping = Signal()

    def probes(self) -> list[OutboxProbe]:
        return [runner.probe for runner in list(self.runners.values())]

    @property
    def published(self) -> int:
        return sum(runner.published for runner in self.runners.values())

    def request_stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stop requested: finishing the batches in flight, then releasing leases")
        self.stopping.set()

    async def run(self) -> None:
        if self.server is not None:
            self.server.start()  # a taken --metrics-port fails before anything else
        try:
            await self.shared.stack.open()
        except BaseException:
            await self._stop_server()
            raise
        named = outbox_addresses(
            self.config.databases, [self.config.named_schemas] * len(self.config.databases)
        )
        self.adopt(named, named=True)
        log.info(
            "relay %s started (%s, connector %s): %d outboxes%s",
            self.config.relay_name,
            self.config.mode,
            self.shared.stack.name,
            len(named),
            f", and those matching {self.config.schema_pattern!r}"
            if self.config.schema_pattern
            else "",
        )
        if self.config.schema_pattern:
            self._discovery.start()
        try:
            await self.stopping.wait()
        finally:
            await self._shutdown()

    def adopt(self, addresses: Sequence[OutboxAddress], *, named: bool = False) -> None:
        """Start a runner for each outbox not drained yet, within the connection cap."""
        for address in addresses:
            if address in self.runners:
                continue
            database = self._database(address)
            runner = OutboxRunner(self.config, address, self.shared, database, named=named)
            self.runners[address] = runner
            if self._over_cap(address):
                runner.problem = (
                    f"--max-db-connections {self.config.max_db_connections} leaves no room "
                    "for it in its database"
                )
                log.error("outbox %s not started: %s", address.name, runner.problem)
                continue
            runner.start()

    def _database(self, address: OutboxAddress) -> Database:
        if (database := self.databases.get(address.dsn)) is None:
            config = self.config.for_outbox(address)
            database = self.databases[address.dsn] = Database(config, self.shared.kind)
        return database

    def _over_cap(self, address: OutboxAddress) -> bool:
        """Would starting ``address`` take its database past --max-db-connections?"""
        cap = self.config.max_db_connections
        if not cap:
            return False
        started = sum(
            1
            for other in self.runners.values()
            if other.address.dsn == address.dsn and other.started
        )
        sampler = 1
        return self.shared.kind.connections(self.config, started + 1) + sampler > cap

    async def let_go(self, addresses: Sequence[OutboxAddress]) -> None:
        """Stop draining outboxes whose schema is gone: their batches finish first."""
        for address in addresses:
            runner = self.runners.pop(address, None)
            if runner is not None:
                log.info("outbox %s no longer matches or exists; letting it go", address.name)
                await runner.stop(self.config.shutdown_timeout)

    async def _discover_forever(self) -> None:
        while not self.stopping.is_set():
            await self.discover()
            await wait_any(self.stopping, timeout=self.config.discover_every)

    async def discover(self) -> None:
        """Look again, in every database, for the schemas the pattern selects."""
        pattern = self.config.schema_pattern or ""
        found = await asyncio.gather(
            *(asyncio.to_thread(self._schemas_of, dsn, pattern) for dsn in self.config.databases)
        )
        for dsn, schemas in zip(self.config.databases, found, strict=True):
            if schemas is None:
                continue  # the database did not answer: keep what it had
            label = self._labels[dsn]
            wanted = outbox_addresses([dsn], [schemas])
            wanted = [OutboxAddress(label, a.schema, dsn) for a in wanted]
            self.adopt(wanted)
            gone = [
                address
                for address, runner in self.runners.items()
                if address.dsn == dsn and not runner.named and address not in wanted
            ]
            await self.let_go(gone)

    def _schemas_of(self, dsn: str, pattern: str) -> list[str] | None:
        try:
            with psycopg.connect(
                dsn, autocommit=True, connect_timeout=max(1, round(self.config.connect_timeout))
            ) as conn:
                schemas = schemas_like(conn, pattern)
            self._lookup_failures.pop(dsn, None)
            return schemas
        except psycopg.Error as exc:
            problem = str(connection_failure(dsn, exc))
            level = logging.DEBUG if self._lookup_failures.get(dsn) == problem else logging.WARNING
            self._lookup_failures[dsn] = problem
            log.log(level, "could not look for schemas matching %r: %s", pattern, problem)
            return None

    async def _shutdown(self) -> None:
        self.stopping.set()
        await self._discovery.stop()
        await stop_all(list(self.runners.values()), self.config.shutdown_timeout)
        for database in self.databases.values():
            await bounded(database.close(), self.config.shutdown_timeout, "database sessions")
        await self._stop_server()
        timeout = self.config.shutdown_timeout
        await bounded(self.shared.stack.close(timeout=timeout), timeout + 1, "connector")
        log.info("relay stopped; %d messages published", self.published)

    async def _stop_server(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
