"""Delayed messages: each joins the outbox when it becomes due, in both modes.

A message written with ``available_at`` later than its ``created_at`` waits in the
scheduled table (migration 8 says why there). A relay's Scheduler sleeps until the
earliest one is due, then runs ``promote_due``, which moves every due message into the
outbox with a new seq: from then on it is an ordinary message of its key, claimed
(polling) or streamed (CDC) in its turn.

It learns of new delayed messages without adding to the claim rounds:

- polling: a delayed insert sends the outbox's NOTIFY like any other, and the listener
  pokes the scheduler; while this relay's writers are quiet (``relay.poll.wakeups``) no NOTIFY
  comes, so it looks every ``QUIET_RECHECK`` seconds;
- CDC: the stream pokes it when it skips a delayed insert.

Otherwise it looks every ``recheck()`` seconds (the poll interval). Pokes are folded into
at most one look per ``MIN_GAP`` seconds, so a burst of delayed inserts costs a few
queries, not one each.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import AsyncConnection

from relay.backoff import full_jitter
from relay.db import DbSession, lock_space
from relay.errors import RelayError
from relay.sqlfiles import query
from relay.tasks import BackgroundTask, Signal, wait_any

log = logging.getLogger(__name__)

MIN_GAP = 0.2  # seconds between two looks that pokes asked for
QUIET_RECHECK = 1.0  # seconds between looks while writers send no NOTIFY
LOCK_RETRY = 0.2  # another relay is promoting: look again this soon
CHUNK = 1000  # messages moved per transaction
# Wake this long after the due time the database gave: its clock decides what is due.
DUE_SLACK = 0.005
# The promotion's advisory lock shares the schema's lock space with the buckets
# (0-255), outside their range.
PROMOTE_LOCK = 1 << 16


@dataclass(frozen=True)
class Promotion:
    """What one ``promote_due`` did."""

    moved: int  # rows taken from the scheduled table
    promoted: int  # rows inserted into the outbox (moved minus ids already there)
    held: bool  # False: another relay held the lock and this one moved nothing
    next_due_in: float | None  # seconds until the next one not yet due; None: none left


class Scheduler:
    """Moves due delayed messages into the outbox; ``start()``/``stop()`` or ``run()``."""

    def __init__(
        self,
        session: DbSession,
        schema: str,
        *,
        recheck: Callable[[], float],
        on_promoted: Callable[[], None] = lambda: None,
        chunk: int = CHUNK,
    ) -> None:
        self._session = session
        self._next_due = query("next_due", schema)
        self._promote = query("promote_due", schema)
        self._params = {"lock_space": lock_space(schema), "lock_key": PROMOTE_LOCK,
                        "limit": chunk}
        self._chunk = chunk
        self._recheck = recheck
        self._on_promoted = on_promoted
        self._poked = Signal()
        self._last_look = -math.inf
        self._failures = 0
        self._background: BackgroundTask | None = None
        self.promoted = 0  # messages this relay moved into the outbox
        self.looks = 0  # at its scheduled table
        # When it looks next unless poked (time.monotonic()): a look that shows nothing
        # due before then need not poke it (relay.poll.due_looks). Infinite while a look
        # is on its way: it may have read the table before the latest insert.
        self.next_look = math.inf

    def poke(self) -> None:
        """Something may have been scheduled: look again soon (at most every MIN_GAP)."""
        self._poked.set()

    def start(self, stopping: asyncio.Event) -> None:
        if self._background is None:
            self._background = BackgroundTask("scheduler", lambda: self.run(stopping))
            self._background.start()

    async def stop(self) -> None:
        if self._background is not None:
            await self._background.stop()
            self._background = None
        await self._session.close()

    async def run(self, stopping: asyncio.Event) -> None:
        """Promote due messages until ``stopping`` is set."""
        while not stopping.is_set():
            self._poked.clear()
            wait = await self._look()
            self.next_look = time.monotonic() + wait
            await wait_any(stopping, self._poked, timeout=wait)
            if self._poked.is_set() and not stopping.is_set():
                gap = self._last_look + MIN_GAP - time.monotonic()
                await wait_any(stopping, timeout=max(gap, 0.0))

    async def _look(self) -> float:
        """Promote what is due; return the seconds until the next look."""
        self._last_look = time.monotonic()
        self.next_look = math.inf
        self.looks += 1
        try:
            result = await self._promote_if_due()
        except (RelayError, psycopg.Error) as exc:
            await self._session.discard()
            delay = full_jitter(self._failures, base=0.5, cap=15.0)
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "could not move due delayed messages into the outbox (%s); "
                    "retrying in %.1fs", exc, delay)
            return delay
        self._failures = 0
        if not result.held:
            return LOCK_RETRY
        recheck = self._recheck()
        if result.next_due_in is None:
            return recheck
        return min(recheck, max(result.next_due_in, 0.0) + DUE_SLACK)

    async def _promote_if_due(self) -> Promotion:
        async with self._session.turn() as conn:
            cursor = await conn.execute(self._next_due, prepare=True)
            row = await cursor.fetchone()
            due_in = row[0] if row is not None else None
            if due_in is None or due_in > 0:
                return Promotion(0, 0, True, due_in)
            return await self._promote_due(conn)

    async def promote_due(self) -> Promotion:
        """Move every due message into the outbox, a chunk per transaction; the last
        chunk's result (with the totals of all chunks)."""
        async with self._session.turn() as conn:
            return await self._promote_due(conn)

    async def _promote_due(self, conn: AsyncConnection[Any]) -> Promotion:
        moved = promoted = 0
        while True:
            cursor = await conn.execute(self._promote, self._params)
            row = await cursor.fetchone()
            assert row is not None  # the statement always returns one row
            result = Promotion(*row)
            moved, promoted = moved + result.moved, promoted + result.promoted
            if result.moved < self._chunk:
                break
        if moved:
            self._promoted(moved, promoted)
        return Promotion(moved, promoted, result.held, result.next_due_in)

    def _promoted(self, moved: int, promoted: int) -> None:
        self.promoted += promoted
        log.debug("%d delayed messages are due and joined the outbox", promoted)
        if moved > promoted:
            log.warning("%d due delayed messages had the id of a message already in the "
                        "outbox, which stands for them (the inbox drops one of the two)",
                        moved - promoted)
        self._on_promoted()
