"""Connections the outboxes of one database share, whatever their mode (relay.fleet):

- ``ClaimPool``: connections taken for one transaction each, in the order asked
  (``PooledClaimSession`` is one outbox's use of it);
- ``Lookout``: one query every ``--poll-interval`` that finds which of the database's
  outboxes have work no wake-up announced, so that they need not each look.

relay.poll.shared and relay.cdc.group build their database's share from these.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from relay.db import DbSession, SharedSession
from relay.errors import RelayError
from relay.sqlfiles import bind
from relay.tasks import BackgroundTask

log = logging.getLogger(__name__)


class ClaimPool:
    """Connections taken for one transaction each (a claim, a round of set-aside rows),
    strictly in the order asked: a connection handed back goes to the longest waiter,
    never to one that asks again right after handing it back (asyncio.Queue would let it
    barge in and send the waiter to the back of the line, and a busy outbox would starve
    the others)."""

    def __init__(self, sessions: list[DbSession]) -> None:
        self.sessions = sessions
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


# An outbox of a database with a Lookout still looks for work on its own this often, in
# case the shared look itself fails for a while.
OWN_LOOK_EVERY = 30.0
# The shared look answers for an outbox while its last success is this many of its
# periods old at most.
ANSWER_FRESH = 3


class Lookout:
    """Every ``every`` seconds, one query over a database's outboxes: wakes each one with
    work that no NOTIFY announced (a NOTIFY lost while the listener reconnected, rows
    written while writers were told not to notify, delayed messages falling due)."""

    def __init__(self, session: DbSession, every: float, *, look: str = "has_work") -> None:
        self._session = session
        self._every = every
        self._look_name = look  # a named query of outboxes.sql, one branch per outbox
        self._wakes: dict[str, Callable[[], None]] = {}
        self._query: sql.Composed | None = None
        self._failures = 0
        self._answered: tuple[float, frozenset[str]] = (float("-inf"), frozenset())
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
        self._answered = (time.monotonic(), frozenset(wakes))
        return [wake for schema, wake in wakes.items() if schema in found]

    def answering(self, schema: str) -> bool:
        """Did the last few looks answer for ``schema`` (so it is woken when it has work,
        and its own looks are only the fallback)?"""
        at, schemas = self._answered
        return schema in schemas and time.monotonic() - at < ANSWER_FRESH * self._every

    def _look(self, wakes: dict[str, Callable[[], None]]) -> sql.Composed:
        if self._query is None:
            self._query = sql.SQL(" UNION ALL ").join(
                bind(
                    "outboxes.sql",
                    self._look_name,
                    outbox=sql.Literal(schema),
                    schema=sql.Identifier(schema),
                )
                for schema in sorted(wakes)
            )
        return self._query
