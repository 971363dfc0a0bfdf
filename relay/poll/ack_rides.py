"""A light batch's acknowledgement that waits to ride with the next claim.

At a service's rate every message is a round of its own: the claim, then the
acknowledgement with its COMMIT, two round trips. A light batch's acknowledgement can
instead wait a moment (``RIDES_FOR``) and go to PostgreSQL in the same simple query as
the next claim (relay.poll.claims.SimpleClaim). Until it is sent its transaction stays
open, so the batch's rows and bucket locks are held as they were while it was published:
no other relay claims them, and per-key order is what it was. If the connection is lost
first, the batch is claimed and published again: a duplicate, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from relay.db import DbSession
from relay.errors import RelayError
from relay.poll.rounds import Published

log = logging.getLogger(__name__)

# How long an acknowledgement may wait for the next wake-up. Writers that notify at a
# service's rate come well within it; a lone commit pays one extra wait of this length
# before its acknowledgement goes alone, which nobody waits for.
RIDES_FOR = 0.05


class WaitingAck:
    """At most one acknowledgement (with its COMMIT) not sent yet, of one claim lane."""

    def __init__(
        self, session: DbSession, deadline: float, count: Callable[[Published], None]
    ) -> None:
        self._session = session
        self._deadline = deadline  # the lane's batch deadline: never wait on a dead server
        self._count = count  # the lane's figures, once the acknowledgement committed
        self._held: tuple[bytes, Published] | None = None

    @property
    def waiting(self) -> bool:
        return self._held is not None

    def hold(self, statement: bytes, published: Published) -> None:
        self._held = (statement, published)

    def take(self) -> tuple[bytes, Published] | None:
        """The acknowledgement, for a claim to send ahead of itself; the caller counts it."""
        held, self._held = self._held, None
        return held

    def forget(self) -> None:
        """Its connection was lost: the transaction with it, so the batch goes again."""
        self._held = None

    async def flush(self) -> None:
        """Send it alone; if that fails, its batch is claimed and published again."""
        held = self.take()
        if held is None:
            return
        try:
            conn = await self._session.connection()
            async with asyncio.timeout(self._deadline):
                await conn.execute(held[0], prepare=False)
        except (RelayError, psycopg.Error, TimeoutError) as exc:
            await self._session.discard()
            log.warning("could not acknowledge a batch (%s); it will be published again", exc)
            return
        self._count(held[1])
