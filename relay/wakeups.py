"""Whether writers should NOTIFY this relay: only while one of its lanes may wait.

NOTIFY takes a database-wide lock at commit and holds it through the commit's WAL flush,
so every writer whose insert notifies commits one at a time (migration 0004 has the
figures). A relay whose every lane keeps finding full batches does not need waking: it
clears its ``listening`` flag in ``outbox.relays``, and the outbox trigger skips the
NOTIFY while no live polling relay listens. Before a lane waits, the flag is set again
and the lane looks for work once more, because a row committed while writers were
quiet woke nobody. A writer whose trigger ran just before the flag came back can still
commit after that second look; the lane's next wait is short to catch it.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from relay.sqlfiles import query

log = logging.getLogger("outbox_relay.wakeups")

BUSY_ROUNDS = 8  # full batches in a row, on every lane, before writers are told to stop
RECHECK_AFTER = 0.05  # seconds: the first wait after the flag came back


class WakeupSwitch:
    """The relay's ``listening`` flag, shared by its lanes (one event loop, no locks)."""

    def __init__(
        self, schema: str, relay_id: UUID, lanes: int, busy_rounds: int = BUSY_ROUNDS
    ) -> None:
        self._query = query("set_listening", schema)
        self._relay_id = relay_id
        self._busy_rounds = busy_rounds
        self._full_in_a_row = [0] * lanes
        self.listening = True  # what a new relays row says

    async def batch_done(self, conn: AsyncConnection[Any], lane: int, *, full: bool) -> None:
        """After each batch: once every lane found full batches for a while, go quiet."""
        self._full_in_a_row[lane] = self._full_in_a_row[lane] + 1 if full else 0
        if self.listening and min(self._full_in_a_row) >= self._busy_rounds:
            await self._set(conn, listening=False)
            log.debug("every lane is busy: writers stop notifying")

    async def before_waiting(self, conn: AsyncConnection[Any], lane: int) -> bool:
        """A lane is about to wait for a NOTIFY. True: writers were quiet until now, so
        the lane must look for work once more before it waits."""
        self._full_in_a_row[lane] = 0
        if self.listening:
            return False
        await self._set(conn, listening=True)
        log.debug("a lane ran dry: writers notify again")
        return True

    async def _set(self, conn: AsyncConnection[Any], *, listening: bool) -> None:
        # Outside any batch: the caller's connection is idle between transactions.
        await conn.execute(self._query, {"listening": listening, "relay_id": self._relay_id})
        self.listening = listening
