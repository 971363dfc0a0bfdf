"""The looks for delayed messages that NOTIFYs ask for, a database's outboxes together.

A delayed insert notifies like any other, so each NOTIFY pokes the outbox's Scheduler,
which looks at its scheduled table (relay.scheduler) at most every MIN_GAP. In a relay of
many outboxes, ten busy tenants made fifty such looks a second on the shared scheduler
connection, each a turn, a round trip and the event loop's turns, to find, nearly always,
nothing new. So the pokes of a database's outboxes go to its DueLook instead: one query
every MIN_GAP at most, over the outboxes poked since the last, which pokes a Scheduler
only when its table holds a message due before the Scheduler's next look anyway. A
Scheduler poked then looks and promotes as before, and learns the due time itself.

A look that fails (an outbox's table dropped, the connection lost) pokes every Scheduler
it was for: each then looks on its own, as without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from psycopg import sql

from relay.db import DbSession
from relay.errors import RelayError
from relay.scheduler import MIN_GAP, Scheduler
from relay.sqlfiles import bind
from relay.tasks import BackgroundTask, Signal

log = logging.getLogger(__name__)


class DueLook:
    """Pokes a database's Schedulers only when what a NOTIFY may have added is due before
    their next look."""

    def __init__(self, session: DbSession, gap: float = MIN_GAP) -> None:
        self._session = session
        self._gap = gap
        self._poked: dict[str, Scheduler] = {}
        self._branches: dict[str, bytes] = {}  # rendered once per outbox
        self._asked = Signal()
        self._failures = 0
        self._task = BackgroundTask("due-look", self._run)

    def poke(self, schema: str, scheduler: Scheduler) -> None:
        """``schema``'s writers notified: it may hold a new delayed message."""
        self._poked[schema] = scheduler
        self._asked.set()
        self._task.start()

    def remove(self, schema: str) -> None:
        self._poked.pop(schema, None)
        self._branches.pop(schema, None)

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            await self._asked.wait()
            self._asked.clear()
            poked, self._poked = self._poked, {}
            for scheduler in await self._to_poke(poked):
                scheduler.poke()
            await asyncio.sleep(self._gap)  # the pokes meanwhile go in the next look

    async def _to_poke(self, poked: dict[str, Scheduler]) -> list[Scheduler]:
        try:
            async with self._session.turn() as conn:
                cursor = await conn.execute(self._look(conn, sorted(poked)), prepare=False)
                rows = await cursor.fetchall()
        except (RelayError, psycopg.Error) as exc:
            await self._session.discard()
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "the shared look for delayed messages failed (%s); each outbox "
                    "looks", exc)
            return list(poked.values())  # unsure: let each one look for itself
        self._failures = 0
        now = time.monotonic()
        due = {str(schema): due_in for schema, due_in in rows}
        return [
            scheduler
            for schema, scheduler in poked.items()
            if (due_in := due.get(schema)) is not None and now + due_in < scheduler.next_look
        ]

    def _look(self, conn: psycopg.AsyncConnection[Any], schemas: list[str]) -> bytes:
        for schema in schemas:
            if schema not in self._branches:
                branch = bind("outboxes.sql", "next_due_of", outbox=sql.Literal(schema),
                              schema=sql.Identifier(schema))
                self._branches[schema] = branch.as_bytes(conn)
        return b" UNION ALL ".join(self._branches[schema] for schema in schemas)
