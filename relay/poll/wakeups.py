"""Whether writers should NOTIFY this relay: only while one of its lanes may wait.

NOTIFY takes a database-wide lock at commit and holds it through the commit's WAL flush,
so every writer whose insert notifies commits one at a time (migration 0004 has the
figures). A relay whose every lane finds rows fast enough does not need waking: it clears
its ``listening`` flag in ``outbox.relays``, the outbox trigger skips the NOTIFY while no
live polling relay listens, and the lanes poll every ``QUIET_POLL`` instead. A lane that
finds nothing ``IDLE_ROUNDS`` times in a row sets the flag again, then looks for work
once more before it waits, because a row committed while writers were quiet woke
nobody. A writer whose trigger ran just before the flag came back can still commit
after that second look; the lane's next wait is short to catch it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from relay.sqlfiles import query

log = logging.getLogger(__name__)

QUIET_RATE = 1000.0  # rows/s per lane: polling every QUIET_POLL then finds ~5 rows a round
RATE_WINDOW = 0.5  # seconds over which a lane's rate is judged
IDLE_ROUNDS = 4  # empty rounds in a row before a quiet lane asks for NOTIFY again
QUIET_POLL = 0.005  # seconds between the rounds of a quiet lane
RECHECK_AFTER = 0.05  # seconds: the first wait after the flag came back


class WakeupSwitch:
    """The relay's ``listening`` flag, shared by its lanes.

    Changes go one at a time (a lock), and the local flag follows the database only once
    the UPDATE committed. ``epoch`` counts the times the flag came back: a lane whose
    round began before the latest return may have missed rows written while writers
    were quiet, so it looks again before it waits.
    """

    def __init__(
        self,
        schema: str,
        relay_id: UUID,
        lanes: int,
        *,
        quiet_rate: float = QUIET_RATE,
        clock: Callable[[], float] = time.monotonic,
        on_quiet: Callable[[], None] = lambda: None,
        claiming: Callable[[], int] | None = None,
    ) -> None:
        self._query = query("set_listening", schema)
        self._relay_id = relay_id
        self._quiet_rate = quiet_rate
        self._clock = clock
        self._on_quiet = on_quiet  # wakes the lanes waiting for a NOTIFY that won't come
        self._lock = asyncio.Lock()
        self._lanes = lanes
        # How many lanes claim now, lanes 0 up (relay.poll.spread): between them they must
        # find as many rows as every lane would.
        self._claiming = claiming or (lambda: lanes)
        self._restart_windows()
        self._idle = [0] * lanes  # rounds in a row that found nothing, per lane
        self.listening = True  # what a new relays row says
        self.epoch = 0

    def _restart_windows(self) -> None:
        self._window_started = [self._clock()] * self._lanes
        self._window_rows = [0] * self._lanes
        self._busy = [False] * self._lanes  # the lane's last window reached quiet_rate

    async def round_done(
        self,
        conn: AsyncConnection[Any],
        lane: int,
        *,
        claimed: int,
        settle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """After each round: once every lane finds rows fast enough, go quiet. ``settle``
        ends the lane's open transaction first (relay.poll.ack_rides), if it has one."""
        self._idle[lane] = 0 if claimed else self._idle[lane] + 1
        self._window_rows[lane] += claimed
        elapsed = self._clock() - self._window_started[lane]
        claiming = self._claiming()
        if elapsed >= RATE_WINDOW:
            quiet_rate = self._quiet_rate * self._lanes / claiming
            self._busy[lane] = self._window_rows[lane] / elapsed >= quiet_rate
            self._window_started[lane] += elapsed
            self._window_rows[lane] = 0
        busy = all(self._busy[:claiming])
        if self.listening and busy and settle is not None:
            await settle()
        if self.listening and busy and await self._change(conn, listening=False):
            log.debug("every lane finds rows fast enough to poll: writers stop notifying")
            self._on_quiet()

    def keeps_polling(self, lane: int) -> bool:
        """Writers are quiet and this lane found rows lately: poll again soon."""
        return not self.listening and self._idle[lane] < IDLE_ROUNDS

    async def before_waiting(self, conn: AsyncConnection[Any], lane: int, round_epoch: int) -> bool:
        """A lane whose last round began at ``round_epoch`` is about to wait for a NOTIFY.
        True: writers were quiet since that round began, so look for work once more."""
        if not self.listening and await self._change(conn, listening=True):
            log.debug("a lane ran dry: writers notify again")
        return self.epoch != round_epoch or not self.listening

    async def _change(self, conn: AsyncConnection[Any], *, listening: bool) -> bool:
        """Set the flag; False when another lane already had."""
        async with self._lock:
            if self.listening == listening:
                return False
            # Outside any batch: the caller's connection is idle between transactions.
            await conn.execute(self._query, {"listening": listening, "relay_id": self._relay_id})
            self.listening = listening
            if listening:
                self.epoch += 1
                self._restart_windows()  # quiet again only after a whole busy window
            return True
