"""CDC for many outboxes of one database: one slot, one publication, one stream, one lead.

In a relay of many outboxes (docs/multi-tenant.md) the outboxes of a database stream
through one logical replication slot and one publication of all their tables (named
``outbox_relay__shared`` unless ``--cdc-slot``/``--cdc-publication`` say otherwise), so
200 tenant schemas take one WAL sender and one slot, not 200.

``SlotGroup`` is that database's share. Each outbox's source (``SharedSlotOutbox``)
joins it while it runs and leaves when it stops; the group leads the slot for all of
them (one leader connection, one lock, a lease row in each outbox's ``cdc_state``),
prepares each outbox as a slot of its own would be prepared (``assess``: stream, publish
its pending rows first, or recreate the slot: relay.cdc.group_prepare), and streams with
a ``GroupSession``.
When an outbox joins or leaves, the session ends cleanly (batches in flight finish,
positions saved) and the next one starts with the new set: a joining outbox's table is
added to the publication and its pending rows are published before its stream starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any, Literal

import psycopg

from relay.backoff import SessionBackoff
from relay.cdc.changes import ChangeDecoder
from relay.cdc.cover import CoverReport, CoverTarget
from relay.cdc.frames import lsn_to_str
from relay.cdc.group_prepare import judge_members, snapshot_requests, take_snapshots
from relay.cdc.group_session import GroupSession, Lane
from relay.cdc.leader import Leadership
from relay.cdc.outbox import OutboxCdc, OutboxSessions, aside_session, scheduler_session
from relay.cdc.outgoing import Outgoing
from relay.cdc.publisher import CdcStats
from relay.cdc.settings import CdcNames
from relay.cdc.slot_lock import leader_session
from relay.cdc.slots import start_streaming
from relay.cdc.stream import ReplicationStream, SlotMissingError
from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession, SharedSession
from relay.errors import ConfigError, PermanentError, RelayError
from relay.logs import CURRENT_OUTBOX
from relay.shared_sessions import OWN_LOOK_EVERY, ClaimPool, Lookout, PooledClaimSession
from relay.source import SourceParts
from relay.tasks import BackgroundTask, bounded, wait_any

log = logging.getLogger(__name__)

BEAT_EVERY = 1.0
ASIDE_POOL = 2  # set-aside rounds of different outboxes in flight at once
# leader, stream, scheduler, housekeeping, snapshot and the set-aside pool
CDC_SHARED_CONNECTIONS = 5 + ASIDE_POOL
SETTLE_QUIET = 0.3  # no outbox joined or left for this long: start streaming
SETTLE_MAX = 5.0  # however many keep coming
# The outboxes share the slot, so its lag is read once for a sampler's round of them
# (a round of a database's outboxes takes well under this), not once per outbox.
SLOT_FIGURES_FRESH = 1.0


class SharedSlotOutbox:
    """One outbox's source in a relay of many, in CDC mode: its own pieces (publisher,
    set-aside rows, snapshot, scheduler, retention), streamed by its database's group."""

    def __init__(self, parts: SourceParts, group: SlotGroup) -> None:
        config = parts.config
        found = config.cdc.problems(config.schema, publish_timeout=config.publish_timeout)
        if found:
            raise ConfigError(" ".join(found))
        self.config = config
        self.names: CdcNames = config.cdc.resolve(config.schema)
        self.health = parts.health
        self.metrics = parts.metrics
        self.stats = CdcStats()
        self.label = CURRENT_OUTBOX.get() or config.schema
        self._group = group
        leadership = group.leadership_for(parts, self)
        self.outbox = OutboxCdc(config, parts.connector, self.names, leadership, self.stats,
                                group.sessions_for(self.names.schema))
        self.outgoing: Outgoing | None = None  # its queue while its slot streams

    @property
    def schema(self) -> str:
        return self.names.schema

    @property
    def published(self) -> int:
        return self.stats.published

    def sample(self, conn: psycopg.Connection[Any]) -> dict[str, Any]:
        return self._group.slot_figures(conn, self.outbox)

    def activity(self) -> Hashable | None:
        """While this relay streams the outbox: the messages it handled, and whether any
        wait (the stream brings every insert here first). None otherwise: a standby sees
        nothing of the inserts."""
        leadership, outgoing = self._group.leadership, self.outgoing
        if outgoing is None or leadership is None or not leadership.is_leader:
            return None
        return (self.outbox.handled(), outgoing.idle, id(outgoing))

    async def run(self, stopping: asyncio.Event) -> None:
        retention = self.outbox.retention(stopping)
        retention.start()
        self._group.join(self)
        self._group.lookout.add(self.schema, self.outbox.wake)
        try:
            await stopping.wait()
        finally:
            self._group.lookout.remove(self.schema)
            await self._group.leave(self, timeout=self.config.shutdown_timeout)
            await retention.stop()

    async def close(self, *, timeout: float = 10.0) -> None:
        await self.outbox.close(timeout)


class SlotGroup:
    """The slot, publication, stream and lead the outboxes of one database share."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.settings = config.cdc
        connect = config.connect_timeout
        # The outboxes' own pieces take turns on these (their duties' statements are
        # short), and a round of set-aside rows takes a pool connection for its
        # transaction: connections grow with databases, not schemas.
        self._duties = {
            "scheduler": scheduler_session(config),
            "housekeeping": DbSession(config.dsn, "cdc-housekeeping", connect_timeout=connect,
                                      settings=INDEX_PLAN_SETTINGS),
            "snapshot": DbSession(config.dsn, "cdc-snapshot", connect_timeout=connect),
        }
        self._aside_pool = ClaimPool([
            aside_session(config, self.settings.takeover_ttl) for _ in range(ASIDE_POOL)
        ])
        # One look per --poll-interval for every outbox's set-aside rows and due delayed
        # messages, in place of each outbox's own looks (then OWN_LOOK_EVERY apart).
        self.lookout = Lookout(self._duties["scheduler"], config.poll_interval,
                               look="has_cdc_work")
        self.sessions: list[DbSession] = [*self._duties.values(), *self._aside_pool.sessions]
        self.members: dict[str, SharedSlotOutbox] = {}
        self.leadership: Leadership | None = None
        self.cover: CoverReport | None = None  # a standby's word on outboxes nobody streams
        self._streaming: set[SharedSlotOutbox] = set()
        self._changed = asyncio.Event()  # the members changed: the session starts again
        self._session_over = asyncio.Event()  # the session streaming now has ended
        self._closing = asyncio.Event()
        self._leaving = asyncio.Lock()
        self._engine: BackgroundTask | None = None
        self._beat = BackgroundTask("cdc-health", self._beat_members)
        self._label = ""
        self._backoff = SessionBackoff(base=config.retry_base, cap=config.retry_cap)
        self._session_started = False
        self._undecodable = False  # as relay.cdc.relay.CdcRelay's
        self._slot_figures: tuple[float, dict[str, Any]] | None = None

    def leadership_for(self, parts: SourceParts, member: SharedSlotOutbox) -> Leadership:
        """The group's lead, made for the first outbox that joins."""
        if self.leadership is None:
            ttl = self.settings.takeover_ttl
            session = leader_session(parts.config, ttl)
            self.sessions.append(session)
            self.leadership = Leadership(
                session, member.names, relay_id=parts.relay_id,
                relay_name=parts.config.relay_name, ttl=ttl,
                heartbeat_interval=self.settings.heartbeat_interval,
                published=lambda: sum(m.published for m in self.members.values()),
                published_of=self._published_of,
            )
            self.cover = CoverReport(member.names.slot)
            self.leadership.on_standby = self.cover.update
            self._label = member.label.rpartition("/")[0] or member.label
        return self.leadership

    def _published_of(self, schema: str) -> int:
        member = self.members.get(schema)
        return member.published if member is not None else 0

    def slot_figures(self, conn: psycopg.Connection[Any], outbox: OutboxCdc) -> dict[str, Any]:
        """The slot's lag for the backlog sampler (its thread): read by the first outbox
        of a round, the same figures for the others."""
        read_at, figures = self._slot_figures or (-SLOT_FIGURES_FRESH, {})
        if time.monotonic() - read_at >= SLOT_FIGURES_FRESH:
            read_at = time.monotonic()
            figures = outbox.sample(conn)
            self._slot_figures = (read_at, figures)
        return figures

    def sessions_for(self, schema: str) -> OutboxSessions:
        """An outbox's turns on the database's connections."""
        return OutboxSessions(
            aside=PooledClaimSession(self._aside_pool),
            snapshot=SharedSession(self._duties["snapshot"]),
            housekeeping=SharedSession(self._duties["housekeeping"]),
            scheduler=SharedSession(self._duties["scheduler"]),
            look_every=OWN_LOOK_EVERY,
            answered=lambda: self.lookout.answering(schema),
        )

    def join(self, member: SharedSlotOutbox) -> None:
        self.members[member.schema] = member
        if self.cover is not None:
            self.cover.add(member.schema, CoverTarget(member.label, member.health, member.metrics))
        self._changed.set()
        self._beat.start()
        if self._engine is None or not self._engine.running:
            self._engine = BackgroundTask("cdc-slot-group", self._run_engine)
            self._engine.start()

    async def leave(self, member: SharedSlotOutbox, *, timeout: float) -> None:
        """Take ``member`` out of the stream: its batch in flight finishes first."""
        if self.members.get(member.schema) is member:
            del self.members[member.schema]
            if self.cover is not None:
                self.cover.remove(member.schema)
        self._changed.set()
        if member in self._streaming:
            await wait_any(self._session_over, timeout=timeout)
        leadership = self.leadership
        if leadership is None or member.schema in self.members:
            return
        async with self._leaving:  # one at a time on the leader connection
            await leadership.uncover(member.schema)
            if not self.members and not self._closing.is_set():
                await leadership.release()  # no outbox left here: let another relay lead

    async def close(self) -> None:
        self._closing.set()
        self._changed.set()
        if self._engine is not None and not await self._engine.finished(
            self.config.shutdown_timeout
        ):
            await self._engine.stop()
        await self._beat.stop()
        await self.lookout.stop()
        if self.leadership is not None:
            await bounded(self.leadership.release(forget=True), self.config.shutdown_timeout,
                          "CDC leadership")
        await self._aside_pool.close()
        await asyncio.gather(*(session.close() for session in self._duties.values()))

    async def _beat_members(self) -> None:
        """/healthz of each outbox: green while the group's event loop answers."""
        while True:
            for member in list(self.members.values()):
                member.health.beat(BEAT_EVERY * 2, "cdc")
            await asyncio.sleep(BEAT_EVERY)

    # --- the engine: lead, prepare, stream, again on every change ----------------------

    def _done(self) -> bool:
        return self._closing.is_set() or not self.members

    async def _run_engine(self) -> None:
        CURRENT_OUTBOX.set(self._label)  # the group's lines name its database
        leadership = self.leadership
        assert leadership is not None
        while not self._done():
            await self._settle_changes()
            if self._done():
                break
            if not leadership.is_leader:
                if leadership.lost.is_set():
                    await leadership.release()
                if not await self._acquire(leadership):
                    continue
            self._session_started = False
            try:
                await self._stream_once(leadership)
            except RelayError as exc:
                # The slot was there at the start, and the stream then found something
                # missing: what it cannot decode (guardrails.undecodable).
                self._undecodable = isinstance(exc, SlotMissingError) and self._session_started
                await self._back_off(exc)
            except Exception as exc:  # a bug, not an outage: keep the traceback, keep going
                log.exception("unexpected error while streaming")
                await self._back_off(RelayError(f"{type(exc).__name__}: {exc}"))

    async def _settle_changes(self) -> None:
        """Outboxes join and leave in bursts (a relay starting, a pattern matching many
        new tenants): wait for a quiet moment rather than restart the stream for each."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_MAX
        while self._changed.is_set() and loop.time() < deadline and not self._closing.is_set():
            self._changed.clear()
            await wait_any(self._changed, self._closing, timeout=SETTLE_QUIET)

    async def _acquire(self, leadership: Leadership) -> bool:
        """Wait as a standby until this relay leads the slot for every outbox (True), or
        until none is left here to lead it for."""
        leadership.schemas = sorted(self.members)
        stop = asyncio.Event()
        watcher = BackgroundTask("cdc-slot-group-members", lambda: self._watch_done(stop))
        watcher.start()
        try:
            return await leadership.acquire(stop)
        finally:
            await watcher.stop()

    async def _watch_done(self, stop: asyncio.Event) -> None:
        while not self._done():
            self._changed.clear()
            await self._changed.wait()
        stop.set()

    async def _stream_once(self, leadership: Leadership) -> None:
        self._changed.clear()
        members = [self.members[schema] for schema in sorted(self.members)]
        self._streaming = set(members)  # until _settle: an outbox leaving waits for it
        self._session_over = asyncio.Event()
        halt = asyncio.Event()
        companions: list[BackgroundTask] = []
        stream: ReplicationStream | None = None
        try:
            await self._cover(leadership, members)
            stream = await ReplicationStream.connect(
                self.config.dsn, connect_timeout=self.config.connect_timeout)
            for member in members:
                await member.outbox.aside.load()  # before a snapshot: it sets aside too
            starts = await self._prepare(stream, leadership, members)
            if starts is None:
                return
            await start_streaming(stream, leadership, members[0].names, min(starts.values()))
            session = GroupSession(stream, self._lanes(members, starts), leadership,
                                   batch_size=self.config.batch_size,
                                   linger=self.settings.linger)
            log.info("streaming slot %s for %d outboxes from %s", members[0].names.slot,
                     len(members), lsn_to_str(min(starts.values())))
            self._session_started = True
            self._backoff.started()
            companions = self._start_companions(members, halt)
            await session.run(_either(self._changed, self._closing))
        finally:
            halt.set()
            for task in companions:
                await task.stop(cancel=task.name != "cdc-set-aside")
            if stream is not None:
                await stream.close()
            await self._settle()

    def _start_companions(
        self, members: list[SharedSlotOutbox], halt: asyncio.Event
    ) -> list[BackgroundTask]:
        """Each outbox's set-aside drain and scheduler, their lines naming the outbox."""
        started = []
        for member in members:
            named = CURRENT_OUTBOX.set(member.label)  # the tasks copy the context now
            try:
                for task in member.outbox.companions(halt):
                    task.start()
                    started.append(task)
            finally:
                CURRENT_OUTBOX.reset(named)
        return started

    async def _settle(self) -> None:
        self._streaming = set()
        self._session_over.set()

    async def _cover(self, leadership: Leadership, members: list[SharedSlotOutbox]) -> None:
        """Hold the lease row of every outbox streamed, and of none other."""
        wanted = {member.schema for member in members}
        for schema in [s for s in leadership.schemas if s not in wanted]:
            await leadership.uncover(schema)
        for schema in sorted(wanted - set(leadership.schemas)):
            await leadership.cover(schema)

    def _lanes(self, members: list[SharedSlotOutbox], starts: dict[str, int]) -> list[Lane]:
        lanes = []
        for member in members:
            outgoing = member.outgoing = Outgoing()
            decoder = ChangeDecoder(member.names, member.outbox.mapping, outgoing,
                                    on_delayed=member.outbox.scheduler.poke)
            lanes.append(Lane(member.names, decoder, outgoing, member.outbox.publisher,
                              starts[member.schema]))
        return lanes

    async def _prepare(
        self, stream: ReplicationStream, leadership: Leadership, members: list[SharedSlotOutbox]
    ) -> dict[str, int] | None:
        """Check the slot against each outbox's ``cdc_state``; recreate it and publish
        pending rows as needed (relay.cdc.group_prepare). The position each outbox
        streams from (None: stopped)."""
        slot, verdicts = await judge_members(
            leadership, members, undecodable_seen=self._undecodable
        )
        self._undecodable = False
        stopping = _either(self._closing)
        requests = await snapshot_requests(stream, leadership, members[0].names, slot, verdicts)
        starts = await take_snapshots(members, verdicts, requests, stopping)
        if starts is not None:
            await self._duties["snapshot"].close()  # needed again only when a slot is made
        return starts

    async def _back_off(self, exc: RelayError) -> None:
        delay = self._backoff.next_delay()
        level = logging.ERROR if isinstance(exc, PermanentError) else logging.WARNING
        log.log(level, "CDC streaming stopped (%s: %s); retrying in %.1fs",
                type(exc).__name__, exc, delay)
        await wait_any(self._closing, timeout=delay)


def _either(*events: asyncio.Event) -> asyncio.Event:
    """An event set once any of ``events`` is (checked when first awaited)."""
    if len(events) == 1:
        return events[0]
    merged = _AnyEvent(events)
    return merged


class _AnyEvent(asyncio.Event):
    """Set when any of its events is; waiting on it waits on them all."""

    def __init__(self, events: tuple[asyncio.Event, ...]) -> None:
        super().__init__()
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)

    async def wait(self) -> Literal[True]:
        await wait_any(*self._events)
        return True
