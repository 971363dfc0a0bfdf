"""One outbox's part of CDC mode, whoever streams its slot.

``OutboxCdc`` holds what an outbox needs besides the replication stream and the lead:
the mapping of its table, the publisher with its set-aside rows and dead letters, the
snapshot of its pending rows, the scheduler of its delayed messages and its retention.
A relay of one outbox (relay.cdc.relay) streams a slot of its own for it; in a relay of
many, the outboxes of a database share one slot, one stream and one lead
(relay.cdc.group), and each keeps these pieces, so its failures stay its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

from relay.cdc.aside import ASIDE_EVERY, AsideDrain, AsideStore
from relay.cdc.debezium import DebeziumMapping
from relay.cdc.frames import lsn_to_str
from relay.cdc.leader import CdcState, Leadership
from relay.cdc.mapping import OutboxTableMapping, RowMapping
from relay.cdc.publisher import BatchPublisher, CdcStats, OutboxParker
from relay.cdc.queries import cdc_query
from relay.cdc.retention import run_retention
from relay.cdc.settings import CdcNames
from relay.cdc.snapshot import Snapshot, SnapshotRequest
from relay.cdc.status import slot_lag
from relay.config import RelayConfig
from relay.connector import Connector
from relay.db import INDEX_PLAN_SETTINGS, DbSession
from relay.outbox_rows import FailurePolicy
from relay.scheduler import Scheduler
from relay.tasks import BackgroundTask, bounded


def failure_policy(config: RelayConfig) -> FailurePolicy:
    return FailurePolicy(
        retry_base=config.retry_base, retry_cap=config.retry_cap,
        max_attempts=config.max_attempts, on_poison=config.on_poison,
    )


def aside_session(config: RelayConfig, ttl: float) -> DbSession:
    """The set-aside rows' connection: like a claim lane's, a transaction (claim,
    publish, acknowledge) ends within the takeover TTL, or PostgreSQL ends it."""
    ttl_ms = str(int(ttl * 1000))
    return DbSession(
        config.dsn, "cdc-set-aside", connect_timeout=config.connect_timeout,
        settings={"idle_in_transaction_session_timeout": ttl_ms, "statement_timeout": ttl_ms,
                  "lock_timeout": str(int(config.publish_timeout * 1000)),
                  **INDEX_PLAN_SETTINGS},
    )


@dataclass(frozen=True)
class OutboxSessions:
    """The connections an outbox's pieces work on: its own (a relay of one outbox), or
    turns on its database's (relay.cdc.group). ``look_every``, when a shared look wakes
    them, is how long the set-aside drain and the scheduler go without looking for work
    on their own; None: as often as a relay of one outbox looks."""

    aside: DbSession
    snapshot: DbSession
    housekeeping: DbSession
    scheduler: DbSession
    look_every: float | None = None
    # Does the shared look answer for this outbox now (its own looks wait meanwhile)?
    answered: Callable[[], bool] = lambda: False

    @classmethod
    def own(cls, config: RelayConfig) -> OutboxSessions:
        connect = config.connect_timeout
        return cls(
            aside=aside_session(config, config.cdc.takeover_ttl),
            snapshot=DbSession(config.dsn, "cdc-snapshot", connect_timeout=connect),
            housekeeping=DbSession(config.dsn, "cdc-housekeeping", connect_timeout=connect,
                                   settings=INDEX_PLAN_SETTINGS),
            scheduler=scheduler_session(config),
        )


def scheduler_session(config: RelayConfig) -> DbSession:
    return DbSession(config.dsn, "cdc-scheduler", connect_timeout=config.connect_timeout,
                     settings={**INDEX_PLAN_SETTINGS,
                               "statement_timeout": str(int(config.lease_ttl * 1000))})


class OutboxCdc:
    """The pieces of one outbox's CDC that do not depend on who streams its slot."""

    def __init__(
        self, config: RelayConfig, connector: Connector, names: CdcNames,
        leadership: Leadership, stats: CdcStats, sessions: OutboxSessions | None = None,
    ) -> None:
        self.config = config
        self.names = names
        self.stats = stats
        self._leadership = leadership
        sessions = sessions or OutboxSessions.own(config)
        self._look_every = sessions.look_every
        self._answered = sessions.answered
        ttl = config.cdc.takeover_ttl
        parker = OutboxParker(leadership.execute, cdc_query("park", names.schema))
        self.aside = AsideStore(
            sessions.aside, names, failure_policy(config),
            leader_id=leadership.relay_id, retention=config.retention,
            batch_size=config.batch_size, deadline=ttl,
        )
        self.publisher = BatchPublisher(
            connector, parker, self.aside, timeout=config.publish_timeout,
            may_publish=leadership.valid, stats=stats,
        )
        self.mapping: RowMapping = (
            DebeziumMapping(names.table, names.routing) if names.routing is not None
            else OutboxTableMapping(names.table)
        )
        self._snapshot = Snapshot(
            sessions.snapshot, names, self.mapping, self.publisher,
            batch_size=config.batch_size, mark_sent=None if names.debezium else self._mark_sent,
        )
        self._retention_session = sessions.housekeeping
        # Delayed messages wait in the scheduled table, not in the slot: the leader moves
        # each into the outbox when due and streams that insert (docs/cdc.md).
        recheck = sessions.look_every or config.poll_interval
        self.scheduler = Scheduler(sessions.scheduler, names.schema, recheck=lambda: recheck)

    def wake(self) -> None:
        """Set-aside rows may be claimed, or delayed messages are due (a shared look
        found them)."""
        self.aside.wake.set()
        self.scheduler.poke()

    def sample(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        return {"cdc": slot_lag(conn, self.names.schema, self.names.slot)}

    def retention(self, stopping: asyncio.Event) -> BackgroundTask:
        """Its housekeeping, run by every relay, leader or not: set-aside rows live in
        the relay's own table even in Debezium mode."""
        return BackgroundTask("cdc-retention", lambda: run_retention(
            self._retention_session, self.names, self.config.retention, stopping,
            self.handled))

    def companions(self, halt: asyncio.Event) -> list[BackgroundTask]:
        """While its slot streams: publish set-aside messages as they come due and move
        delayed messages into the outbox as they fall due (only the leader does either)."""
        drain = AsideDrain(self.aside, self.publisher.publish, self._leadership.valid,
                           self._count_published, every=self._look_every or ASIDE_EVERY,
                           covered=self._answered)
        return [
            BackgroundTask("cdc-set-aside", lambda: drain.run(halt)),
            BackgroundTask("cdc-scheduler", lambda: self.scheduler.run(halt)),
        ]

    async def snapshot_then_stream(
        self, request: SnapshotRequest, stopping: asyncio.Event
    ) -> int | None:
        """Publish the pending rows ``request`` asks for, recorded in ``cdc_state``;
        return the position streaming starts from (None: stopped during the snapshot)."""
        leadership, schema = self._leadership, self.names.schema
        await leadership.guarded(cdc_query("begin_snapshot", schema),
                                 {"lsn": lsn_to_str(request.position)})
        xmin = await self._snapshot.run(request, stopping)
        # Needed again only when a slot is made or lost: do not hold a connection for it.
        # (A slot shared by several outboxes closes its snapshot session itself.)
        await self._snapshot.close()
        if xmin is None:
            return None
        await leadership.guarded(cdc_query("finish_snapshot", schema), {"covered": xmin})
        state = CdcState(request.position, xmin, True)
        leadership.states[schema] = state
        if schema == leadership.schemas[0]:
            leadership.state = state
        return request.position

    async def close(self, timeout: float) -> None:
        await bounded(self._snapshot.close(), timeout, "CDC snapshot session")
        await bounded(self._retention_session.close(), timeout, "CDC retention session")
        await bounded(self.aside.close(), timeout, "CDC set-aside session")
        await bounded(self.scheduler.stop(), timeout, "CDC scheduler")

    def handled(self) -> int:
        """Messages this outbox published, set aside or parked: each is a row that
        retention will have to delete."""
        stats = self.stats
        return stats.published + stats.set_aside + stats.parked + stats.dead_lettered

    def _count_published(self, delivered: int) -> None:
        self.stats.published += delivered

    async def _mark_sent(self, ids: list[UUID]) -> None:
        if ids:
            await self._leadership.execute(cdc_query("mark_sent", self.names.schema),
                                           {"ids": ids})
