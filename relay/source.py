"""Where messages come from: the one shape both modes have.

A source finds an outbox's messages (polling the table with bucket leases, or streaming
its WAL from a replication slot), publishes them through the connector stack it is given
and acknowledges what the broker confirmed. The relay process (``relay.service``) only
assembles one: it knows nothing of leases, lanes or slots.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import psycopg

from relay.config import RelayConfig
from relay.db import DbSession
from relay.decorators import PublishStack
from relay.health import HealthState
from relay.metrics import RelayMetrics


@dataclass(frozen=True)
class SourceParts:
    """What a source is built from: the process's shared pieces."""

    config: RelayConfig
    connector: PublishStack
    relay_id: UUID
    metrics: RelayMetrics
    health: HealthState
    # Registers a database session, so the metrics can show what each one is doing.
    keep_session: Callable[[DbSession], DbSession]
    # In a relay of many outboxes, what the outboxes of this database share: built once
    # per database by the mode's ``SourceKind.share`` (None: the source has its own).
    database: object | None = None


class Source(Protocol):
    """One outbox's messages, found, published and acknowledged until stopped."""

    @property
    def published(self) -> int:
        """Messages this source has published (and acknowledged) since it started."""
        ...

    async def run(self, stopping: asyncio.Event) -> None:
        """Publish until ``stopping`` is set, surviving outages; return once stopped."""

    async def close(self, *, timeout: float) -> None:
        """Release what the source holds (leases, the slot's lead, connections), each
        step within ``timeout`` seconds."""

    def sample(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        """Figures of this source for the backlog gauges, read on the sampler's own
        connection in the sampler's thread (never on the publish path)."""
        ...

    def activity(self) -> Hashable | None:
        """What this relay has seen of the outbox's messages lately, as a value that
        changes whenever they may have (relay.operability.BacklogSampler); None when it
        cannot tell (it does not see every insert)."""
        ...


@dataclass(frozen=True)
class SourceKind:
    """A mode: how to check that the database is ready for it, and how to build its
    source. ``preflight`` raises a RelayError, in one sentence, when it is not."""

    preflight: Callable[[RelayConfig], None]
    build: Callable[[SourceParts], Source]
    # What one database's outboxes of this mode share in a relay of many (the object
    # goes to each source as ``SourceParts.database``); None: nothing, each has its own.
    share: Callable[[RelayConfig], DatabaseShare] | None = None
    # The PostgreSQL connections ``n`` outboxes of one database hold at most in this mode
    # (docs/multi-tenant.md), the backlog sampler's aside.
    connections: Callable[[RelayConfig, int], int] = lambda config, n: 6 * n


class DatabaseShare(Protocol):
    """Connections one database's outboxes share; closed once, when the relay stops."""

    sessions: list[DbSession]

    async def close(self) -> None: ...
