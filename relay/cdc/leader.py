"""Exactly one relay streams a slot; the others wait as standbys and take over.

The leader holds a session-level advisory lock on its leader connection (both made in
relay.cdc.slot_lock) and renews a lease row (``cdc_state.lease_expires_at``) every
``ttl / 4``. A relay that dies loses its connection, so PostgreSQL drops the lock at
once and a standby claims it on its next poll (``ttl / 4``). A relay that is frozen
(SIGSTOP, a stalled VM) keeps its connection and its lock, but stops renewing: once the
lease has run out a standby ends the frozen relay's sessions (its lock holder and its
walsender) and claims the lock, about ``ttl * 1.25`` after the last renewal. The frozen
relay's own clock has stopped it from publishing by then (leases count only for
``ttl * 0.8`` after a renewal began).

Everything the leader writes to ``cdc_state`` is guarded by its leader id, so a deposed
leader that wakes up can change nothing; it finds out and stops.

Where several outboxes of a database share one slot (relay.cdc.group), the lead is the
slot's: the leader connection holds the one lock and keeps a lease row in every
outbox's ``cdc_state`` (``schemas``), each outbox's own record of its position. A
standby reads the lease row of each outbox it selects: the leader covers an outbox when
that row is its lock holder's. One it does not cover is streamed by nobody while that
leader lives (relays sharing a slot selected different outboxes): ``on_standby`` hears
of it every round (relay.cdc.cover says so).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncClientCursor, sql
from psycopg.rows import dict_row

from relay.cdc.frames import str_to_lsn
from relay.cdc.queries import cdc_query
from relay.cdc.settings import CdcNames
from relay.cdc.slot_lock import slot_params
from relay.db import DbSession, first_row_of_each
from relay.errors import LeaseLostError, RelayError, translate_db_error
from relay.sqlfiles import bind, query
from relay.tasks import BackgroundTask, wait_any

log = logging.getLogger(__name__)

SAFETY_MARGIN = 0.2  # fraction of the TTL the leader refuses to use
# A dropped outbox: its cdc_state (or its whole schema) is gone.
SCHEMA_GONE = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)


@dataclass(frozen=True)
class CdcState:
    """What ``cdc_state`` says about the slot when this relay became leader."""

    confirmed_lsn: int | None = None
    covered_xmin: str | None = None
    snapshot_done: bool = False


@dataclass(frozen=True)
class StandbyView:
    """What a standby saw of the slot's lead in one round: who leads, and which of the
    outboxes selected here its lead does not cover (nobody streams them)."""

    leader: str
    uncovered: tuple[str, ...] = ()


class Leadership:
    """Claims, keeps and gives up the right to stream one slot."""

    def __init__(
        self,
        session: DbSession,
        names: CdcNames,
        *,
        relay_id: UUID,
        relay_name: str,
        ttl: float,
        heartbeat_interval: float,
        published: Callable[[], int],
        published_of: Callable[[str], int] | None = None,
    ) -> None:
        self._session = session
        self._names = names
        self._schema = names.schema
        # The outboxes whose cdc_state rows this lead covers; the first answers standbys.
        self.schemas: list[str] = [names.schema]
        self.relay_id = relay_id
        self._relay_name = relay_name
        self._ttl = ttl
        self._heartbeat_interval = heartbeat_interval
        self._published = published
        # Each outbox's own count for its relays row, where the lead covers several.
        self._published_of = published_of or (lambda _schema: published())
        self._params: dict[str, Any] = {
            "leader_id": relay_id, "relay_id": relay_id, "name": relay_name, "ttl": ttl,
            **slot_params(names.slot),
        }
        self.state = CdcState()
        self.states: dict[str, CdcState] = {}  # per schema, read when the lead was taken
        self.lost = asyncio.Event()
        self._leader = False
        self._conn: psycopg.AsyncConnection[Any] | None = None  # the one holding the lock
        self._valid_until = 0.0
        self._keeper = BackgroundTask("cdc-leadership", self._keep)
        self._quit = asyncio.Event()  # ends _keep between statements, never inside one
        self._gone: set[str] = set()  # selected outboxes found dropped by the last round
        # Told each standby round what the lead covers; None once this relay leads.
        self.on_standby: Callable[[StandbyView | None], None] = lambda _view: None

    @property
    def interval(self) -> float:
        return self._ttl / 4

    @property
    def is_leader(self) -> bool:
        return self._leader and not self.lost.is_set()

    def valid(self) -> bool:
        """May this relay publish now? False once its lease may have run out."""
        return self.is_leader and time.monotonic() < self._valid_until

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Wait as a standby until this relay leads (True) or ``stopping`` is set."""
        announced = False
        while not stopping.is_set():
            try:
                if await self._try_claim():
                    return True
                view = await self._standby_round()
                self.on_standby(view)
                if not announced:
                    log.info("standby: relay %s streams slot %s; taking over if it stops",
                             view.leader if view else "?", self._names.slot)
                    announced = True
            except (RelayError, psycopg.Error) as exc:
                log.warning("standby check failed (will retry): %s", exc)
                await self._session.discard()
            await wait_any(stopping, timeout=self.interval)
        return False

    async def _try_claim(self) -> bool:
        started = time.monotonic()
        conn = await self._session.connection()
        for schema in list(self.schemas):
            # The first claim takes the slot's lock; the session holds it for the others.
            row = await self._claim_row(conn, schema)
            if row is None:
                return False
            if schema in self.schemas:
                self.states[schema] = _state_of(row)
        self.state = self.states.get(self._schema, CdcState())
        self._conn = conn
        self._leader = True
        self.lost.clear()
        self._quit.clear()
        self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN)
        self._keeper.start()
        log.info("relay %s leads CDC on slot %s", self._relay_name, self._names.slot)
        self.on_standby(None)
        return True

    async def _claim_row(
        self, conn: psycopg.AsyncConnection[Any], schema: str
    ) -> tuple[Any, ...] | None:
        try:
            cursor = await conn.execute(cdc_query("claim_leadership", schema), self._params)
        except SCHEMA_GONE as exc:
            if not self._let_go_of(schema, exc):
                raise
            return self._lock_row(schema)
        return await cursor.fetchone()

    def _lock_row(self, schema: str) -> tuple[Any, ...] | None:
        """What a claim of a schema that was dropped meanwhile counts as: nothing to hold."""
        return (None, None, False) if self.schemas else None

    def _let_go_of(self, schema: str, exc: psycopg.Error) -> bool:
        """An outbox sharing the slot was dropped (its schema, its cdc_state): stop
        covering it, rather than lose the lead of the others. False for a slot of one."""
        if not self._names.shared:
            return False
        if schema in self.schemas:
            self.schemas.remove(schema)
            self.states.pop(schema, None)
            log.info("schema %s is gone (%s); the lead of slot %s no longer covers it",
                     schema, str(exc).strip().splitlines()[0], self._names.slot)
        return True

    async def cover(self, schema: str) -> CdcState:
        """While leading: take ``schema``'s lease row too (an outbox joined the slot)."""
        conn = await self.connection()
        try:
            row = await self._claim_row(conn, schema)
        except psycopg.Error as exc:
            await self._session.discard()
            raise translate_db_error(exc, f"taking the lead of {schema}'s CDC state") from None
        if row is None:  # the lock is this session's: only a lost session lands here
            self.lost.set()
            raise LeaseLostError(f"the lead of slot {self._names.slot} was lost")
        if schema not in self.schemas:
            self.schemas.append(schema)
        self.states[schema] = state = _state_of(row)
        return state

    async def uncover(self, schema: str) -> None:
        """Give ``schema``'s lease row up (its outbox left the slot); a schema that is
        gone already has nothing to give up."""
        if schema not in self.schemas:
            return
        self.schemas.remove(schema)
        self.states.pop(schema, None)
        try:
            if self.is_leader:
                await self.execute(cdc_query("release_leadership", schema), schema=schema)
            await self.execute(query("forget_relay", schema), schema=schema)
        except RelayError as exc:
            log.info("could not clear the CDC lease of %s: %s", schema, exc)

    async def _standby_round(self) -> StandbyView | None:
        """Heartbeat as a standby; see which outboxes selected here the lead covers; end
        the leader's sessions once its lease ran out. None: no session holds the lock."""
        await self._heartbeat_relay_row()
        held, leases = await self._holders()
        lock_pid = held.get("lock_pid")
        if lock_pid is None:
            return None
        # Rows of the lock holder's: the outboxes it covers. Another row (a previous
        # leader's, or none) says nothing about this leader, so never ends its sessions.
        covered = {schema: row for schema, row in leases.items()
                   if row["leader_pid"] == lock_pid}
        leader = next((str(row["leader_name"]) for row in covered.values()),
                      f"(unknown: its session has pid {lock_pid})")
        if any(row["expired"] for row in covered.values()):
            log.warning("relay %s stopped renewing its lease on slot %s; ending its sessions "
                        "to take over", leader, self._names.slot)
            for pid in {lock_pid, held.get("walsender_pid")} - {None}:
                await self.end_session(pid)
        return StandbyView(leader, tuple(s for s in self.schemas
                                         if s not in covered and s not in self._gone))

    async def _holders(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """The slot's lock holder and walsender, and the lease row of each selected
        outbox that has one: two queries however many outboxes."""
        conn = await self._session.connection()
        schemas = list(self.schemas)
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(cdc_query("slot_holder", self._schema), self._params)
            held = await cursor.fetchone() or {}
            try:
                await cursor.execute(sql.SQL("\nUNION ALL\n").join(
                    bind("cdc.sql", "lease_of_outbox", schema=sql.Identifier(schema),
                         schema_name=sql.Literal(schema)) for schema in schemas), self._params)
                rows = await cursor.fetchall()
                self._gone = set()
            except SCHEMA_GONE:  # an outbox dropped meanwhile: read each alone
                rows = await self._leases_one_by_one(cursor, schemas)
        return held, {row["schema_name"]: row for row in rows}

    async def _leases_one_by_one(
        self, cursor: psycopg.AsyncCursor[dict[str, Any]], schemas: list[str]
    ) -> list[dict[str, Any]]:
        rows, self._gone = [], set()
        for schema in schemas:
            try:
                await cursor.execute(bind("cdc.sql", "lease_of_outbox",
                                          schema=sql.Identifier(schema),
                                          schema_name=sql.Literal(schema)), self._params)
            except SCHEMA_GONE:
                self._gone.add(schema)
                continue
            rows.extend(await cursor.fetchall())
        return rows

    async def end_session(self, pid: int) -> None:
        await self.execute(cdc_query("end_session", self._schema), {"pid": pid})

    async def _keep(self) -> None:
        """While leading: renew every ttl/4 and heartbeat the WAL."""
        last_heartbeat = time.monotonic()
        while self.is_leader:
            await wait_any(self.lost, self._quit, timeout=self.interval)
            if not self.is_leader or self._quit.is_set():
                return
            try:
                await self._renew()
                now = time.monotonic()
                if self._heartbeat_interval and now - last_heartbeat >= self._heartbeat_interval:
                    await self.execute(cdc_query("heartbeat", self._schema))
                    last_heartbeat = now
            except (RelayError, psycopg.Error) as exc:
                log.error("lost the lead on slot %s: %s", self._names.slot, exc)
                self.lost.set()
                await self._session.discard()  # and with the session, the lock

    async def _renew(self) -> None:
        started = time.monotonic()
        if len(self.schemas) > 1 and await self._renew_together():
            self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN)
            return
        for schema in list(self.schemas):
            await self.guarded(cdc_query("renew_leadership", schema), schema=schema)
        self._valid_until = started + self._ttl * (1 - SAFETY_MARGIN)
        await self._heartbeat_relay_row()

    async def _renew_together(self) -> bool:
        """Every outbox's lease and relays row in one query: one round trip a tick for a
        slot shared by hundreds. False when a statement failed on a connection still fit
        (an outbox dropped, likely): then each goes alone, and the dropped one is let go."""
        schemas = list(self.schemas)
        conn = await self.connection()
        try:
            cursor = await conn.execute(sql.SQL(";\n").join(
                self._renewal_of(schema) for schema in schemas))
            renewed = await first_row_of_each(cursor, len(schemas))
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                raise translate_db_error(exc, "renewing the CDC lease") from None
            return False
        if any(row is None for row in renewed):
            self.lost.set()
            raise LeaseLostError(f"another relay took over slot {self._names.slot}")
        return True

    def _renewal_of(self, schema: str) -> sql.Composed:
        return bind(
            "cdc.sql", "renew_lead_of_outbox", schema=sql.Identifier(schema),
            relay_id=sql.Literal(self.relay_id), relay_name=sql.Literal(self._relay_name),
            ttl=sql.Literal(self._ttl), published=sql.Literal(self._published_of(schema)),
            slot=sql.Literal(self._names.slot),
        )

    async def _heartbeat_relay_row(self) -> None:
        """The ``relays`` rows, so ``outbox-relay status`` lists CDC relays too."""
        for schema in list(self.schemas):
            await self.execute(query("heartbeat", schema), {
                "relay_id": self.relay_id, "name": self._relay_name, "mode": "cdc",
                "ttl": self._ttl, "published": self._published_of(schema),
            }, schema=schema)

    async def execute(
        self, statement: sql.Composed, params: Mapping[str, Any] | None = None,
        *, schema: str | None = None,
    ) -> int:
        """Run ``statement`` on the leader connection; return the rows it affected. A
        statement of ``schema``'s, when that outbox was dropped from a shared slot,
        affects nothing and leaves the session (and the lock) alone: -1."""
        conn = await self.connection()
        try:
            cursor = await conn.execute(statement, {**self._params, **(params or {})})
        except SCHEMA_GONE as exc:
            if schema is not None and self._let_go_of(schema, exc):
                return -1
            await self._session.discard()
            raise translate_db_error(exc, "writing CDC state") from None
        except psycopg.Error as exc:
            await self._session.discard()
            raise translate_db_error(exc, "writing CDC state") from None
        return cursor.rowcount

    async def guarded(
        self, statement: sql.Composed, params: Mapping[str, Any] | None = None,
        *, schema: str | None = None,
    ) -> None:
        """Run a leader-only write; LeaseLostError when another relay leads now."""
        if await self.execute(statement, params, schema=schema) == 0:
            self.lost.set()
            raise LeaseLostError(f"another relay took over slot {self._names.slot}")

    async def guarded_together(
        self, writes: Sequence[tuple[sql.Composed, Mapping[str, Any]]]
    ) -> bool:
        """Leader-only writes of several outboxes (each returning a row while this relay
        leads) as one query: one round trip and one commit where one each would be
        hundreds. False when one failed on a connection still fit (an outbox dropped,
        likely): the query wrote nothing, and the caller writes them one by one.
        LeaseLostError, as ``guarded``, when another relay leads now."""
        conn = await self.connection()
        try:
            async with AsyncClientCursor(conn) as binder:
                texts = [binder.mogrify(statement, {**self._params, **params})
                         for statement, params in writes]
        except psycopg.Error:
            return False
        return await self.guarded_texts(texts)

    async def render(self, statement: sql.Composed, params: Mapping[str, Any]) -> str:
        """``statement`` bound client-side with ``params`` and the lead's own, as
        ``guarded_texts`` takes it."""
        conn = await self.connection()
        async with AsyncClientCursor(conn) as binder:
            return binder.mogrify(statement, {**self._params, **params})

    async def guarded_texts(self, texts: Sequence[str]) -> bool:
        """``guarded_together`` for statements bound already (``render``)."""
        conn = await self.connection()
        try:
            # Bound client-side and without parameters: psycopg sends the statements as
            # one simple query, which PostgreSQL runs as one transaction.
            cursor = await conn.execute(";\n".join(texts).encode(conn.info.encoding))
            written = await first_row_of_each(cursor, len(texts))
        except psycopg.Error as exc:
            if conn.closed or conn.broken:
                await self._session.discard()
                raise translate_db_error(exc, "writing CDC state") from None
            return False
        if any(row is None for row in written):
            self.lost.set()
            raise LeaseLostError(f"another relay took over slot {self._names.slot}")
        return True

    async def refresh_state(self, schema: str | None = None) -> CdcState:
        """Read ``cdc_state`` again (it moves on while this relay streams), of this
        lead's outbox or of ``schema``'s."""
        schema = schema or self._schema
        conn = await self.connection()
        try:
            cursor = await conn.execute(cdc_query("state", schema), self._params)
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            await self._session.discard()
            raise translate_db_error(exc, "reading CDC state") from None
        state = self.states.get(schema, CdcState()) if row is None else _state_of(row)
        self.states[schema] = state
        if schema == self._schema:
            self.state = state
        return state

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The leader's own connection while leading (never a new one: a new session would
        not hold the lock); the standby's session otherwise."""
        if not self._leader:
            return await self._session.connection()
        conn = self._conn
        if conn is None or conn.closed or conn.broken or self.lost.is_set():
            self.lost.set()
            raise LeaseLostError(f"the leader connection for slot {self._names.slot} is gone, "
                                 "and with it the lock")
        return conn

    async def release(self, *, forget: bool = False) -> None:
        """Step down: stop renewing, clear the lease, end the session (and the lock);
        ``forget`` also removes this relay's ``relays`` row (on the final stop)."""
        was_leader = self._leader
        self._valid_until = 0.0
        if self._keeper.running:
            self._quit.set()
        # The keeper ends its own loop (never cancelled mid-renewal) once asked to quit.
        await self._keeper.stop(cancel=False)
        try:
            if was_leader and not self.lost.is_set():
                for schema in list(self.schemas):
                    await self.execute(cdc_query("release_leadership", schema), schema=schema)
        except (RelayError, psycopg.Error) as exc:
            log.warning("could not clear the CDC lease on stop (it expires by itself): %s", exc)
        self._leader, self._conn = False, None
        if forget:
            try:
                for schema in list(self.schemas):
                    await self.execute(query("forget_relay", schema), schema=schema)
            except (RelayError, psycopg.Error) as exc:
                log.warning("could not remove this relay from the relays table: %s", exc)
        await self._session.close()  # ends the session, and so releases the lock


def _state_of(row: tuple[Any, ...] | Any) -> CdcState:
    confirmed, covered, done = row[0], row[1], row[2]
    return CdcState(None if confirmed is None else str_to_lsn(confirmed), covered, bool(done))
