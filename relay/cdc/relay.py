"""CDC mode: publish outbox events from the WAL instead of polling the table.

``CdcRelay(config, connector)`` is the CDC source (``relay.source``), the counterpart of
``relay.poll.source.PollSource``: ``await run(stopping)`` waits as a standby until it
leads the slot, then prepares the publication and the slot (with the pending-row
snapshot when needed), streams until ``stopping`` is set, and reconnects with backoff
after failures; ``await close(timeout=...)`` gives the lead up. See docs/cdc.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

import psycopg

from relay.backoff import SessionBackoff
from relay.cdc.changes import ChangeDecoder
from relay.cdc.cover import CoverReport, CoverTarget
from relay.cdc.frames import lsn_to_str
from relay.cdc.group import CDC_SHARED_CONNECTIONS, SharedSlotOutbox, SlotGroup
from relay.cdc.guardrails import Action, assess, undecodable
from relay.cdc.leader import Leadership
from relay.cdc.outbox import OutboxCdc
from relay.cdc.outgoing import Outgoing
from relay.cdc.preflight import require_ready
from relay.cdc.publisher import CdcStats
from relay.cdc.session import StreamSession
from relay.cdc.settings import CdcSettings
from relay.cdc.slot_lock import leader_session
from relay.cdc.slots import (
    current_database,
    drop_slot,
    ensure_publication,
    read_slot,
    start_streaming,
)
from relay.cdc.snapshot import SnapshotRequest
from relay.cdc.stream import ReplicationStream, SlotMissingError
from relay.config import RelayConfig
from relay.connector import Connector
from relay.errors import ConfigError, PermanentError, RelayError
from relay.health import HealthState
from relay.metrics import RelayMetrics
from relay.source import Source, SourceKind, SourceParts
from relay.tasks import BackgroundTask, bounded, wait_any

log = logging.getLogger(__name__)



class CdcRelay:
    """Streams one outbox's events from a logical replication slot to a connector."""

    def __init__(
        self,
        config: RelayConfig,
        connector: Connector,
        settings: CdcSettings | None = None,
        *,
        relay_id: UUID | None = None,
        health: HealthState | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        if settings is not None:
            # One source for every piece below: the sessions' timeouts (the set-aside
            # session's idle_in_transaction_session_timeout is the takeover TTL, so a
            # frozen leader's open transaction ends in time) read config.cdc.
            config = replace(config, cdc=settings)
        self.config = config
        self._health = health or HealthState()
        self.settings = config.cdc
        found = self.settings.problems(config.schema, publish_timeout=config.publish_timeout)
        if found:
            raise ConfigError(" ".join(found))
        self.names = names = self.settings.resolve(config.schema)
        self.stats = CdcStats()
        ttl = self.settings.takeover_ttl
        self.leadership = Leadership(
            leader_session(config, ttl), names, relay_id=relay_id or uuid4(),
            relay_name=config.relay_name, ttl=ttl,
            heartbeat_interval=self.settings.heartbeat_interval,
            published=lambda: self.stats.published,
        )
        # A slot named with --cdc-slot may be led by a relay of another outbox.
        cover = CoverReport(names.slot)
        cover.add(names.schema, CoverTarget(None, self._health, metrics))
        self.leadership.on_standby = cover.update
        self.outbox = OutboxCdc(config, connector, names, self.leadership, self.stats)
        self.aside = self.outbox.aside
        self.publisher = self.outbox.publisher
        self.scheduler = self.outbox.scheduler
        self.streaming = asyncio.Event()  # set while this relay streams
        self._backoff = SessionBackoff(base=config.retry_base, cap=config.retry_cap)
        # The slot failed to decode while streaming (a publication younger than its
        # start): the next start makes it again (guardrails.undecodable).
        self._undecodable = False

    @property
    def relay_id(self) -> UUID:
        return self.leadership.relay_id

    @property
    def published(self) -> int:
        return self.stats.published

    def sample(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        return self.outbox.sample(conn)

    def activity(self) -> Hashable | None:
        return None  # one outbox: its figures are read every round anyway

    async def run(self, stopping: asyncio.Event) -> None:
        """Lead (or wait to) and stream until ``stopping`` is set."""
        background = [BackgroundTask("cdc-health", self._beat), self.outbox.retention(stopping)]
        for task in background:
            task.start()
        try:
            await self._lead_and_stream(stopping)
        finally:
            for task in background:
                await task.stop()

    async def _beat(self, every: float = 1.0) -> None:
        """/healthz: green while this loop answers. The stream's waits are bounded by
        its own timeouts, so a stuck publish shows in the lag, not here."""
        while True:
            self._health.beat(every * 2, "cdc")
            await asyncio.sleep(every)

    async def _lead_and_stream(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            if not self.leadership.is_leader:
                if self.leadership.lost.is_set():
                    await self.leadership.release()  # after a lost lead: a clean session
                if not await self.leadership.acquire(stopping):
                    return
            try:
                await self._stream_once(stopping)
            except RelayError as exc:
                # The slot was there at the start, and the stream then found something
                # missing: what it cannot decode (guardrails.undecodable).
                self._undecodable = isinstance(exc, SlotMissingError) and self.streaming.is_set()
                await self._back_off(stopping, exc)
            except Exception as exc:  # a bug, not an outage: keep the traceback, keep going
                log.exception("unexpected error while streaming")
                await self._back_off(stopping, RelayError(f"{type(exc).__name__}: {exc}"))
            finally:
                self.streaming.clear()

    async def close(self, *, timeout: float = 10.0) -> None:
        """Give up the lead (a standby takes over at once) and close every connection,
        each step within ``timeout`` seconds."""
        await bounded(self.leadership.release(forget=True), timeout, "CDC leadership")
        await self.outbox.close(timeout)

    async def _stream_once(self, stopping: asyncio.Event) -> None:
        stream = await ReplicationStream.connect(
            self.config.dsn, connect_timeout=self.config.connect_timeout
        )
        try:
            await self.aside.load()  # before the snapshot: it sets aside held keys' rows too
            start_lsn = await self._prepare(stream, stopping)
            if start_lsn is None:
                return
            await start_streaming(stream, self.leadership, self.names, start_lsn)
            outgoing = Outgoing()
            decoder = ChangeDecoder(self.names, self.outbox.mapping, outgoing,
                                    on_delayed=self.scheduler.poke)
            session = StreamSession(
                stream, decoder, outgoing,
                self.publisher, self.leadership, schema=self.names.schema,
                start_lsn=start_lsn, batch_size=self.config.batch_size,
                linger=self.settings.linger,
            )
            log.info("streaming slot %s from %s", self.names.slot, lsn_to_str(start_lsn))
            self.streaming.set()
            self._backoff.started()
            await self._stream_with_companions(session, stopping)
        finally:
            await stream.close()

    async def _stream_with_companions(
        self, session: StreamSession, stopping: asyncio.Event
    ) -> None:
        """Stream; meanwhile publish set-aside messages as they come due and move delayed
        messages into the outbox as they fall due. Only the leader does either, while it
        streams: a standby learns of none."""
        halt = asyncio.Event()
        companions = self.outbox.companions(halt)
        for task in companions:
            task.start()
        try:
            await session.run(stopping)
        finally:
            halt.set()  # the set-aside round in flight ends within the publish timeout
            await companions[0].stop(cancel=False)
            await companions[1].stop()

    async def _prepare(self, stream: ReplicationStream, stopping: asyncio.Event) -> int | None:
        """Check the slot against cdc_state, recreate and snapshot as needed; return the
        position streaming starts from (None: stopped during the snapshot)."""
        leadership, names = self.leadership, self.names
        await ensure_publication(leadership, names)  # before the slot: pgoutput needs it
        state = await leadership.refresh_state()
        slot = await read_slot(leadership, names)
        verdict = assess(slot, state, await current_database(leadership), names.slot)
        if self._undecodable and slot is not None:
            verdict = undecodable(names.slot, names.publication, state)
        self._undecodable = False
        log.log(verdict.level, verdict.message)
        if verdict.action is Action.CREATE:
            if verdict.drop_slot and slot is not None:
                await drop_slot(leadership, names, slot)
            consistent, exported = await stream.create_slot(names.slot)
            request = SnapshotRequest(exported, verdict.covered_xmin, consistent)
            return await self.outbox.snapshot_then_stream(request, stopping)
        if verdict.action is Action.SNAPSHOT:
            lsn = state.confirmed_lsn or verdict.snapshot_lsn or 0
            request = SnapshotRequest(None, verdict.covered_xmin, lsn)
            return await self.outbox.snapshot_then_stream(request, stopping)
        return state.confirmed_lsn or 0

    async def _back_off(self, stopping: asyncio.Event, exc: RelayError) -> None:
        delay = self._backoff.next_delay()
        level = logging.ERROR if isinstance(exc, PermanentError) else logging.WARNING
        log.log(level, "CDC streaming stopped (%s: %s); retrying in %.1fs",
                type(exc).__name__, exc, delay)
        await wait_any(stopping, timeout=delay)



def _cdc_source(parts: SourceParts) -> Source:
    if isinstance(parts.database, SlotGroup):
        return SharedSlotOutbox(parts, parts.database)
    return CdcRelay(parts.config, parts.connector, relay_id=parts.relay_id, health=parts.health,
                    metrics=parts.metrics)


def cdc_connections(config: RelayConfig, outboxes: int) -> int:
    """A database's outboxes share every connection (relay.cdc.group), however many
    they are: the slot's leader and replication stream, the scheduler's, housekeeping,
    the snapshot's while pending rows are published, and the set-aside pool."""
    return CDC_SHARED_CONNECTIONS


CDC = SourceKind(preflight=require_ready, build=_cdc_source, share=SlotGroup,
                 connections=cdc_connections)
