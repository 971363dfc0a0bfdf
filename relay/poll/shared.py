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
- the looks for delayed messages that NOTIFYs ask for, a query every 0.2 s at most for
  the outboxes notified meanwhile (relay.poll.due_looks), not each outbox's own;
- the fallback look for work a NOTIFY did not announce: one query every --poll-interval
  for all of them, which wakes those with messages to claim or delayed messages due,
  instead of each outbox's lanes and scheduler polling on their own (200 idle tenants
  polling each second cost more CPU than their traffic).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from psycopg import sql

from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession, SharedSession
from relay.logs import CURRENT_OUTBOX
from relay.poll.due_looks import DueLook
from relay.poll.leases import LeaseKeeper
from relay.poll.listener import SharedListener
from relay.poll.poller import claim_session
from relay.poll.rounds import ClaimRound
from relay.shared_sessions import OWN_LOOK_EVERY, ClaimPool, Lookout, PooledClaimSession
from relay.tasks import BackgroundTask, Signal, wait_any

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


class Shared(Protocol):
    """What a database's outboxes take a place on: the listener, the lookout."""

    def add(self, schema: str, wake: Callable[[], None]) -> None: ...

    def remove(self, schema: str) -> None: ...


class OutboxPlace:
    """One outbox's place on something its database's outboxes share, in WakeListener's
    shape (``start``/``stop``), so a source need not know whether it is shared."""

    def __init__(self, shared: Shared, schema: str, wake: Callable[[], None]) -> None:
        self._shared = shared
        self._schema = schema
        self._wake = wake

    def start(self) -> None:
        self._shared.add(self._schema, self._wake)

    async def stop(self) -> None:
        self._shared.remove(self._schema)


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
        self._due = Signal()
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
        self.pool = ClaimPool([claim_session(config, n) for n in range(claim_pool_size(config))])
        self.claim_round = ClaimRound(self.pool, config.lease_ttl, config.poll_linger)
        listen = DbSession(config.dsn, "listen", connect_timeout=config.connect_timeout)
        self.listener = SharedListener(listen, config.poll_linger)
        self.lookout = Lookout(self._duties["scheduler"], config.poll_interval)
        self.due_look = DueLook(self._duties["scheduler"])
        self.lease_ticker = LeaseTicker(SharedSession(self._duties["leases"]), config.lease_ttl)
        self.sessions: list[DbSession] = [*self._duties.values(), *self.pool.sessions, listen]

    def duty(self, name: str) -> DbSession:
        return SharedSession(self._duties[name])

    def claim_session(self) -> DbSession:
        return PooledClaimSession(self.pool)

    def listener_for(self, schema: str, wake: Callable[[], None]) -> OutboxPlace:
        return OutboxPlace(self.listener, schema, wake)

    def lookout_for(self, schema: str, wake: Callable[[], None]) -> OutboxPlace:
        return OutboxPlace(self.lookout, schema, wake)

    @staticmethod
    def outbox_config(config: RelayConfig) -> RelayConfig:
        """An outbox's own looks for work (its lanes' fallback poll, its scheduler's
        recheck) become rare: the Lookout looks for all of them every --poll-interval."""
        return replace(config, poll_interval=max(config.poll_interval, OWN_LOOK_EVERY))

    async def close(self) -> None:
        await self.lease_ticker.stop()
        await self.lookout.stop()
        await self.due_look.stop()
        await self.listener.stop()
        await self.claim_round.stop()
        await self.pool.close()
        await asyncio.gather(*(session.close() for session in self._duties.values()))
