"""What the polling outboxes of one database share in a relay of many outboxes.

A relay of one outbox keeps a connection per duty (relay.db). With many outboxes in a
database that would be ``claim_lanes + 5`` connections per schema: 200 tenant schemas
would hold more than PostgreSQL's default ``max_connections``. So the outboxes of a
database share (docs/multi-tenant.md):

- one connection per duty (leases, scheduler, housekeeping), each outbox's work taking
  its turn on it (``DbSession.turn``), a unit of work at a time;
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
import logging
from collections.abc import Callable
from dataclasses import replace

from relay.config import RelayConfig
from relay.db import INDEX_PLAN_SETTINGS, DbSession, SharedSession
from relay.poll.listener import SharedListener
from relay.poll.poller import claim_session
from relay.shared_sessions import OWN_LOOK_EVERY, ClaimPool, Lookout, PooledClaimSession

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
        listen = DbSession(config.dsn, "listen", connect_timeout=config.connect_timeout)
        self.listener = SharedListener(listen, config.poll_linger)
        self.lookout = Lookout(self._duties["scheduler"], config.poll_interval)
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
        await self.lookout.stop()
        await self.listener.stop()
        await self.pool.close()
        await asyncio.gather(*(session.close() for session in self._duties.values()))
