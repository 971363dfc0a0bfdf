"""Typed, frozen relay configuration with named defaults and plain-sentence validation."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from relay.cdc.settings import SHARED_NAME, CdcSettings
from relay.dsn import dsn_problems
from relay.durations import AGE, PG_TIMEOUT, TIMER, DurationRange
from relay.errors import ConfigError
from relay.formats.settings import FormatSettings
from relay.names import as_sentence, schema_problem
from relay.outboxes import OutboxAddress, pattern_problem

DEFAULT_SCHEMA = "outbox"
DEFAULT_MODE = "poll"
DEFAULT_CONNECTOR = "kafka"
# Debezium's max.batch.size. Each batch pays a fixed cost (its round trips to PostgreSQL
# and the broker's confirm), which smaller batches pay more often; memory grows with the
# messages in flight (benchmarks/README.md has the figures).
DEFAULT_BATCH_SIZE = 2048
# Two claim transactions in flight: one lane's next claim runs in PostgreSQL while the
# other lane's batch is with the broker (benchmarks/README.md has the figures).
DEFAULT_CLAIM_LANES = 2
MAX_CLAIM_LANES = 16
DEFAULT_PUBLISH_TIMEOUT = 5.0
DEFAULT_LEASE_TTL = 10.0
DEFAULT_POLL_INTERVAL = 1.0
# After a wake-up with the outbox drained, wait this long so the commits right behind
# share the next batch: a longer linger costs latency and saves CPU per message
# (benchmarks/README.md has the trade measured).
DEFAULT_POLL_LINGER = 0.002
DEFAULT_RETENTION = 0.0
DEFAULT_SHUTDOWN_TIMEOUT = 15.0
DEFAULT_RETRY_BASE = 0.5
DEFAULT_RETRY_CAP = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_METRICS_HOST = "127.0.0.1"  # loopback unless told otherwise: metrics are not public
DEFAULT_METRICS_PORT = 9646  # 0 turns the metrics and health server off
DEFAULT_MAX_ATTEMPTS = 20
DEFAULT_ON_POISON = "block"
ON_POISON_CHOICES = ("block", "skip")
DEFAULT_LOG_FORMAT = "text"
LOG_FORMATS = ("text", "json")
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
MAX_MESSAGE_BYTES = 1_000_000_000
MAX_ATTEMPTS = 2_147_483_647
MAX_BATCH_SIZE = 10_000
MODES = ("poll", "cdc")
# How often --schema-pattern looks again for schemas migrated or dropped since.
DEFAULT_DISCOVER_EVERY = 10.0
MAX_DB_CONNECTIONS = 10_000
RETENTION = DurationRange(AGE.low, AGE.high, zero="delete once confirmed", reason=AGE.reason)


def default_relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``outbox-relay run`` needs. Build it, then call ``validate()``; the
    connector's options are validated by the connector (``relay.connector``)."""

    dsn: str
    schema: str = DEFAULT_SCHEMA
    # Several outboxes in one process (docs/multi-tenant.md): every database of ``dsns``
    # with every schema of ``schemas`` and those matching ``schema_pattern``. Empty: the
    # one outbox ``dsn`` and ``schema`` name, as a relay of one outbox always had.
    dsns: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()
    schema_pattern: str | None = None
    discover_every: float = DEFAULT_DISCOVER_EVERY
    # PostgreSQL connections the relay may hold to one database; 0: as many as it needs.
    max_db_connections: int = 0
    mode: str = DEFAULT_MODE
    connector: str = DEFAULT_CONNECTOR
    # NAME=VALUE as the user gave them: the connector's own settings class parses and
    # checks them (relay/connector_settings.py), so the relay knows no broker's settings.
    connector_options: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE
    claim_lanes: int = DEFAULT_CLAIM_LANES
    publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT
    lease_ttl: float = DEFAULT_LEASE_TTL
    poll_interval: float = DEFAULT_POLL_INTERVAL
    poll_linger: float = DEFAULT_POLL_LINGER
    retention: float = DEFAULT_RETENTION
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    retry_base: float = DEFAULT_RETRY_BASE
    retry_cap: float = DEFAULT_RETRY_CAP
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    relay_name: str = field(default_factory=default_relay_name)
    metrics_host: str = DEFAULT_METRICS_HOST
    metrics_port: int = DEFAULT_METRICS_PORT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    on_poison: str = DEFAULT_ON_POISON
    log_format: str = DEFAULT_LOG_FORMAT
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    cdc: CdcSettings = field(default_factory=CdcSettings)
    formats: FormatSettings = field(default_factory=FormatSettings)

    @property
    def databases(self) -> tuple[str, ...]:
        """Every database DSN to drain."""
        return self.dsns or (self.dsn,)

    @property
    def named_schemas(self) -> tuple[str, ...]:
        """The schemas named outright (``schema_pattern`` may add more per database)."""
        if self.schemas:
            return self.schemas
        return () if self.schema_pattern else (self.schema,)

    @property
    def many_outboxes(self) -> bool:
        """More than one outbox, or a pattern that may find any number of them."""
        return len(self.databases) * len(self.named_schemas) > 1 or bool(self.schema_pattern)

    def for_outbox(self, outbox: OutboxAddress) -> RelayConfig:
        """The configuration of one outbox's source: this one, for that database and
        schema; in CDC mode its slot and publication are its database's shared ones."""
        return replace(
            self, dsn=outbox.dsn, schema=outbox.schema, dsns=(), schemas=(),
            schema_pattern=None, cdc=self._outbox_cdc,
        )

    @property
    def _outbox_cdc(self) -> CdcSettings:
        return replace(self.cdc, shared=True) if self.many_outboxes else self.cdc

    def problems(self) -> list[str]:
        """Every problem with this configuration, each as one plain sentence."""
        found = self._outbox_problems()
        if self.mode not in MODES:
            found.append(f"The mode {self.mode!r} is unknown; choose one of: {', '.join(MODES)}.")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            found.append(f"The batch size must be between 1 and {MAX_BATCH_SIZE}.")
        if not 1 <= self.claim_lanes <= MAX_CLAIM_LANES:
            found.append(f"The number of claim lanes must be between 1 and {MAX_CLAIM_LANES}.")
        found.extend(self._timing_problems())
        found.extend(self._operability_problems())
        found.extend(self.formats.problems(connector=self.connector))
        if self.mode == "cdc":
            found.extend(self._cdc_problems())
        return found

    def _outbox_problems(self) -> list[str]:
        found: list[str] = []
        if not any(dsn.strip() for dsn in self.databases):
            found.append("The database DSN is empty; pass --dsn or set OUTBOX_RELAY_DSN.")
        for dsn in self.databases:
            found.extend(dsn_problems(dsn) if dsn.strip() else [])
        if len(set(self.databases)) < len(self.databases):
            found.append("The same database DSN is given twice; give each database once.")
        for schema in self.named_schemas:
            if problem := schema_problem(schema):
                found.append(as_sentence(problem))
        if len(set(self.named_schemas)) < len(self.named_schemas):
            found.append("The same schema is given twice; give each schema once.")
        if self.schema_pattern is not None and (problem := pattern_problem(self.schema_pattern)):
            found.append(as_sentence(problem))
        if not 0 <= self.max_db_connections <= MAX_DB_CONNECTIONS:
            found.append(
                f"The connection cap per database must be between 0 (no cap) and "
                f"{MAX_DB_CONNECTIONS}."
            )
        elif 0 < self.max_db_connections < (least := self._fewest_connections()):
            found.append(
                f"--max-db-connections {self.max_db_connections} is too few: a database's "
                f"outboxes need at least {least} in {self.mode} mode (docs/multi-tenant.md)."
            )
        return found

    def _fewest_connections(self) -> int:
        """Polling: leases, scheduler, listener, sampler, (housekeeping,) one to claim with;
        CDC: the seven its outboxes share (relay.cdc.group) and the sampler's."""
        if self.mode == "cdc":
            return 8
        return 6 if self.retention > 0 else 5

    def _cdc_problems(self) -> list[str]:
        schemas = self.named_schemas or (self.schema,)
        found = [
            problem
            for schema in schemas
            for problem in self._outbox_cdc.problems(schema, publish_timeout=self.publish_timeout)
        ]
        if self.many_outboxes and self.cdc.names_one_outbox():
            found.append(
                "--cdc-table and --cdc-debezium name one outbox's table; with several "
                "outboxes leave them out: each database's outboxes then stream through one "
                f"slot and one publication, {SHARED_NAME} unless --cdc-slot and "
                "--cdc-publication name them (docs/multi-tenant.md)."
            )
        return list(dict.fromkeys(found))

    def _operability_problems(self) -> list[str]:
        found: list[str] = []
        if not 0 <= self.metrics_port <= 65535:
            found.append("The metrics port must be between 0 (off) and 65535.")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            found.append(
                f"The maximum number of attempts must be at least 1 and at most {MAX_ATTEMPTS} "
                "(PostgreSQL counts them in an integer)."
            )
        if self.on_poison not in ON_POISON_CHOICES:
            found.append(
                f"The poison-message policy {self.on_poison!r} is unknown; "
                f"choose one of: {', '.join(ON_POISON_CHOICES)}."
            )
        if self.log_format not in LOG_FORMATS:
            found.append(f"The log format {self.log_format!r} is unknown; use text or json.")
        if not 1 <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            found.append(
                f"The largest message size must be between 1 and {MAX_MESSAGE_BYTES} bytes "
                "(Kafka's largest message.max.bytes; RabbitMQ's limit is lower)."
            )
        return found

    def _timing_problems(self) -> list[str]:
        ranges = [
            ("publish timeout", self.publish_timeout, PG_TIMEOUT),
            ("lease TTL", self.lease_ttl, PG_TIMEOUT),
            ("poll interval", self.poll_interval, TIMER),
            ("shutdown timeout", self.shutdown_timeout, TIMER),
            ("retry base delay", self.retry_base, TIMER),
            ("retry cap", self.retry_cap, TIMER),
            ("connect timeout", self.connect_timeout, TIMER),
            ("retention", self.retention, RETENTION),
        ]
        found = [p for what, value, allowed in ranges if (p := allowed.problem(what, value))]
        if not 0 <= self.poll_linger <= 1:
            found.append("The poll linger must be between 0 and 1 second.")
        if self.retry_cap < self.retry_base:
            found.append("The retry cap must not be smaller than the retry base delay.")
        if self.lease_ttl < 2 * self.publish_timeout and self.lease_ttl > 0:
            found.append(
                "The lease TTL must be at least twice the publish timeout, so a lease cannot "
                "expire while a batch is still waiting for the broker."
            )
        return found

    def validate(self) -> RelayConfig:
        """Raise ConfigError listing every problem; return self when there are none."""
        found = self.problems()
        if found:
            raise ConfigError(" ".join(found))
        return self
