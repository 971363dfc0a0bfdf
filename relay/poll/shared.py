"""What the polling outboxes of one database share in a relay of many outboxes.

A relay of one outbox keeps a connection per duty (relay.db). With many outboxes in a
database that would be ``claim_lanes + 5`` connections per schema: 200 tenant schemas
would hold more than PostgreSQL's default ``max_connections``. So the outboxes of a
database share (docs/multi-tenant.md):

- one connection per duty (leases, scheduler, housekeeping), each outbox's work taking
  its turn on it (``DbSession.turn``), a unit of work at a time;
- one lease tick for all of them (LeaseTicker): every outbox's renewal in one query
  every ``--lease-ttl / 4``, not a transaction per outbox on a timer of its own;
- one LISTEN connection, listening on every outbox's channel;
- a pool of claim connections: a claim lane takes one for a claim transaction and hands
  it back when the batch is acknowledged, so the lanes of outboxes with work take turns,
  first come first served, and a tenant with a backlog cannot starve one with ten
  messages (it queues behind them after every batch);
- the fallback look for work a NOTIFY did not announce: one query every --poll-interval
  for all of them, which wakes those with messages to claim or delayed messages due,
  instead of each outbox's lanes and scheduler polling on their own (200 idle tenants
  polling each second cost more CPU than their traffic).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession, SharedSession
from relay.errors import RelayError
from relay.logs import CURRENT_OUTBOX
from relay.poll.leases import LeaseKeeper
from relay.poll.listener import SharedListener
from relay.poll.poller import claim_session
from relay.sqlfiles import bind
from relay.tasks import BackgroundTask, wait_any

log = logging.getLogger(__name__)

# Claim connections a database's outboxes share when no --max-db-connections says
# otherwise: two claim transactions in flight per lane count of one outbox, as a relay of
# one outbox has, so outboxes with work overlap one's claim with another's publish.
CLAIM_POOL_PER_LANE = 2


def duty_connections(config: RelayConfig) -> int:
    """The duties' connections besides the claim pool: leases, scheduler, listener, and
    housekeeping when --retention keeps sent rows (the backlog sampler's is the fleet's)."""
    return 4 if config.retention > 0 else 3


def claim_pool_size(config: RelayConfig) -> int:
    """Claim connections per database: what the cap leaves after the duties and the
    sampler, or two per claim lane of one outbox."""
    if config.max_db_connections:
        return max(1, config.max_db_connections - duty_connections(config) - 1)
    return CLAIM_POOL_PER_LANE * config.claim_lanes


def poll_connections(config: RelayConfig, outboxes: int) -> int:
    """A database's polling outboxes hold this many connections, however many they are."""
    return duty_connections(config) + claim_pool_size(config)


class ClaimPool:
    """Claim connections taken for one claim transaction each, strictly in the order
    asked: a connection handed back goes to the longest waiter, never to a lane that asks
    again right after handing it back (asyncio.Queue would let that lane barge in and
    send the waiter to the back of the line, and a busy outbox would starve the others)."""

    def __init__(self, config: RelayConfig, size: int) -> None:
        self.sessions = [claim_session(config, lane) for lane in range(size)]
        self._free: list[DbSession] = list(self.sessions)
        self._waiters: collections.deque[asyncio.Future[DbSession]] = collections.deque()

    async def take(self) -> DbSession:
        if self._free and not self._waiters:
            return self._free.pop()
        waiter: asyncio.Future[DbSession] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._hand_on(waiter.result())  # handed over just as it was cancelled
            else:
                self._waiters.remove(waiter)
            raise

    async def give_back(self, session: DbSession) -> None:
        await session.discard_if_unusable()  # a failed batch's connection is not passed on
        self._hand_on(session)

    def _hand_on(self, session: DbSession) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(session)
                return
        self._free.append(session)

    async def close(self) -> None:
        await asyncio.gather(*(session.close() for session in self.sessions))


class PooledClaimSession(SharedSession):
    """A claim lane's session: a pool connection from the first use until ``release``."""

    def __init__(self, pool: ClaimPool) -> None:
        super().__init__(pool.sessions[0])
        self.duty = "claim"
        self._pool = pool
        self._held: DbSession | None = None

    @property
    def connected(self) -> bool:
        return self._held is not None and self._held.connected

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._held is None:
            self._held = await self._pool.take()
        return await self._held.connection()

    async def discard(self) -> None:
        if self._held is not None:
            await self._held.discard()

    async def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._pool.give_back(held)

    async def close(self) -> None:
        await self.release()


class ListenerShare:
    """One outbox's place on its database's SharedListener (WakeListener's shape)."""

    def __init__(self, listener: SharedListener, schema: str, wake: Callable[[], None]) -> None:
        self._listener = listener
        self._schema = schema
        self._wake = wake

    def start(self) -> None:
        self._listener.add(self._schema, self._wake)

    async def stop(self) -> None:
        self._listener.remove(self._schema)


# An outbox of a database with a Lookout still looks for work on its own this often, in
# case the shared look itself fails for a while.
OWN_LOOK_EVERY = 30.0


class Lookout:
    """Every ``every`` seconds, one query over a database's outboxes: wakes each one with
    work that no NOTIFY announced (a NOTIFY lost while the listener reconnected, rows
    written while writers were told not to notify, delayed messages falling due)."""

    def __init__(self, session: DbSession, every: float) -> None:
        self._session = session
        self._every = every
        self._wakes: dict[str, Callable[[], None]] = {}
        self._query: sql.Composed | None = None
        self._failures = 0
        self._task = BackgroundTask("lookout", self._run)

    def add(self, schema: str, wake: Callable[[], None]) -> None:
        self._wakes[schema] = wake
        self._query = None
        self._task.start()

    def remove(self, schema: str) -> None:
        self._wakes.pop(schema, None)
        self._query = None

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            for wake in await self._with_work():
                wake()

    async def _with_work(self) -> list[Callable[[], None]]:
        wakes = dict(self._wakes)
        if not wakes:
            return []
        try:
            async with self._session.turn() as conn:
                cursor = await conn.execute(self._look(wakes))
                found = {str(row[0]) for row in await cursor.fetchall()}
        except (RelayError, psycopg.Error) as exc:
            await self._session.discard()
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "the shared look for work failed (%s); every outbox looks", exc)
            return list(wakes.values())  # unsure: let each one look for itself
        self._failures = 0
        return [wake for schema, wake in wakes.items() if schema in found]

    def _look(self, wakes: dict[str, Callable[[], None]]) -> sql.Composed:
        if self._query is None:
            self._query = sql.SQL(" UNION ALL ").join(
                bind(
                    "outboxes.sql",
                    "has_work",
                    outbox=sql.Literal(schema),
                    schema=sql.Identifier(schema),
                )
                for schema in sorted(wakes)
            )
        return self._query


class LookoutShare:
    """One outbox's place on its database's Lookout."""

    def __init__(self, lookout: Lookout, schema: str, wake: Callable[[], None]) -> None:
        self._lookout = lookout
        self._schema = schema
        self._wake = wake

    def start(self) -> None:
        self._lookout.add(self._schema, self._wake)

    async def stop(self) -> None:
        self._lookout.remove(self._schema)


class LeaseTicker:
    """The lease ticks of a database's outboxes, together, at the cadence of one
    outbox's (``--lease-ttl / 4``): one query on the leases connection holding every
    outbox's renewal statement (one implicit transaction), so 200 outboxes cost a round
    trip and a commit a tick instead of 200 of each. Each keeper's leases, fair share
    and validity clock stay its own.

    A tick that fails on a statement while the connection survives (one outbox's schema
    dropped or its privileges revoked) is done again outbox by outbox, each alone, so
    one outbox cannot make the others' leases lapse; an outbox that fails alone goes on
    ticking alone, beside the others' query, until it succeeds. A connection that failed
    is dropped; every keeper's leases then lapse by themselves, as a relay of one
    outbox's do, until a tick goes through."""

    def __init__(self, session: DbSession, ttl: float) -> None:
        self._session = session
        self._ttl = ttl
        self._keepers: dict[str, LeaseKeeper] = {}
        self._alone: set[LeaseKeeper] = set()  # failed alone last time: tried alone again
        self._due = asyncio.Event()
        self._task = BackgroundTask("lease-ticker", self._run)

    def add(self, keeper: LeaseKeeper) -> None:
        self._keepers[keeper.schema] = keeper
        self._due.set()  # a new outbox leases its buckets now, not a tick later
        self._task.start()

    def remove(self, keeper: LeaseKeeper) -> None:
        if self._keepers.get(keeper.schema) is keeper:
            del self._keepers[keeper.schema]
        self._alone.discard(keeper)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        CURRENT_OUTBOX.set(None)  # started by one outbox, it speaks for the database
        while True:
            await wait_any(self._due, timeout=self._ttl / 4)
            self._due.clear()
            together = [k for k in self._keepers.values() if k not in self._alone]
            alone = [k for k in self._keepers.values() if k in self._alone]
            if together and not await self._tick(together):
                alone += together
            for keeper in alone:
                if self._keepers.get(keeper.schema) is not keeper:
                    continue  # stopped meanwhile
                if await keeper.tick_alone():
                    self._alone.discard(keeper)
                else:
                    self._alone.add(keeper)

    async def _tick(self, keepers: list[LeaseKeeper]) -> bool:
        """Tick them together; False when each should try alone (a statement failed on
        a connection that is still fit: one outbox's failure, likely)."""
        try:
            async with asyncio.timeout(self._ttl / 2):
                await self._tick_together(keepers)
            return True
        except Exception as exc:
            log.warning(
                "the lease renewal of %d outboxes failed: %s", len(keepers), exc or type(exc)
            )
            await self._session.discard()  # only if the connection itself failed
            return not self._session.connected

    async def _tick_together(self, keepers: list[LeaseKeeper]) -> None:
        started = [keeper.now() for keeper in keepers]
        async with self._session.turn() as conn:
            # one query of many statements: one transaction, one round trip, no statement
            # of it parsed for parameters in Python
            batch = sql.SQL(";\n").join(keeper.renewal() for keeper in keepers)
            cursor = await conn.execute(batch)
            rows = []
            for _ in keepers:
                rows.append(await cursor.fetchone())
                cursor.nextset()
            shares = [
                await keeper.rebalance(conn, row) for keeper, row in zip(keepers, rows, strict=True)
            ]
            # still in the turn: a keeper that stops hands its buckets back after this
            for keeper, began, (live, owned) in zip(keepers, started, shares, strict=True):
                keeper.in_context(keeper.renewed, began, live, owned)


class PollDatabase:
    """The sessions and listener one database's polling outboxes share."""

    def __init__(self, config: RelayConfig) -> None:
        self._config = config
        self._duties = {
            duty: DbSession(
                config.dsn,
                duty,
                connect_timeout=config.connect_timeout,
                settings={
                    "statement_timeout": str(int(config.lease_ttl * 1000)),
                    **(INDEX_PLAN_SETTINGS if duty != "leases" else {}),
                },
            )
            for duty in ("leases", "scheduler", "housekeeping")
        }
        self.pool = ClaimPool(config, claim_pool_size(config))
        listen = DbSession(config.dsn, "listen", connect_timeout=config.connect_timeout)
        self.listener = SharedListener(listen, config.poll_linger)
        self.lookout = Lookout(self._duties["scheduler"], config.poll_interval)
        self.lease_ticker = LeaseTicker(SharedSession(self._duties["leases"]), config.lease_ttl)
        self.sessions: list[DbSession] = [*self._duties.values(), *self.pool.sessions, listen]

    def duty(self, name: str) -> DbSession:
        return SharedSession(self._duties[name])

    def claim_session(self) -> DbSession:
        return PooledClaimSession(self.pool)

    def listener_for(self, schema: str, wake: Callable[[], None]) -> ListenerShare:
        return ListenerShare(self.listener, schema, wake)

    def lookout_for(self, schema: str, wake: Callable[[], None]) -> LookoutShare:
        return LookoutShare(self.lookout, schema, wake)

    @staticmethod
    def outbox_config(config: RelayConfig) -> RelayConfig:
        """An outbox's own looks for work (its lanes' fallback poll, its scheduler's
        recheck) become rare: the Lookout looks for all of them every --poll-interval."""
        return replace(config, poll_interval=max(config.poll_interval, OWN_LOOK_EVERY))

    async def close(self) -> None:
        await self.lease_ticker.stop()
        await self.lookout.stop()
        await self.listener.stop()
        await self.pool.close()
        await asyncio.gather(*(session.close() for session in self._duties.values()))
