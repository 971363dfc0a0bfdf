"""Claim rounds: the light claims of a database's outboxes, together.

At a service's rate each outbox of a relay of many claims a message or two a round, and
every round pays the same fixed cost: a pool connection, a claim round trip, a publish,
an acknowledgement round trip and COMMIT, and the event loop's turns between them. Ten
outboxes at 100 msg/s each paid it ten times where one outbox at 1,000 msg/s pays it once
for a batch. So a claim lane on light traffic (one that claims in one simple query,
relay.poll.claims.SimpleClaim) hands its round to its database's ``ClaimRound``, which
takes the lanes waiting at that moment and runs one round for all of them:

- a round asked for right after the last one's end waits a poll linger first, as a lane
  of one outbox does after a short wait, so the lanes right behind join it;
- one transaction on one pool connection: each outbox's ``lock_leased_buckets`` and
  ``claim_batch`` in one simple query (each still a statement, with a snapshot, of its
  own: a claim reads after its own lock);
- each outbox's batch published through its own connector stack, all at once;
- every outbox's acknowledgement, then one COMMIT, in one query.

What holds per outbox holds in a round: each outbox claims only the buckets it leases,
under its own advisory locks, which the round's transaction holds until every batch is
acknowledged, so per-key order and the leases' protection are those of a claim of its
own; each batch's acknowledgement (dead letters, key holds, retries) is its own outbox's.

Isolation: an outbox whose publish fails (its leases ran out, a bug) fails alone, its rows
left unacknowledged for the next claim. A round whose claim or acknowledgement fails (an
outbox's table dropped, a statement timing out, the connection lost) answers no one: each
of its outboxes then drains alone at once, as a relay of one outbox would, and an outbox
that fails alone keeps draining alone, out of the rounds, until it succeeds
(relay.poll.poller). One outbox's failure costs the others one round, not their pace.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg import AsyncConnection

from relay.db import DbSession
from relay.errors import RelayError
from relay.model import OutboxMessage, Outcome
from relay.outbox_rows import Acknowledgement, message_row, register_claim_text_loaders
from relay.poll.claims import BEGIN_READ_COMMITTED
from relay.shared_sessions import ClaimPool
from relay.tasks import BackgroundTask, Signal

log = logging.getLogger(__name__)

# A round asked for within this many poll lingers of the last one's end waits a linger
# first, so the lanes woken right behind the first join it: a lane of one outbox lingers
# by the same rule (relay.poll.poller.LONE_COMMIT_AFTER), and the outboxes of a round are
# a database's traffic, which comes that close together when each outbox's does not.
LONE_ASK_AFTER = 2


@dataclass(frozen=True)
class DrainResult:
    claimed: int = 0
    outage: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Published:
    """One outbox's batch of a round, after the broker answered."""

    ack: Acknowledgement
    outcomes: Sequence[Outcome]
    elapsed: float


class RoundMember(Protocol):
    """A claim lane's part in a round (relay.poll.poller.Poller)."""

    def leased(self) -> bool: ...

    def claim_statements(self, conn: AsyncConnection[Any]) -> bytes: ...

    async def publish(self, batch: Sequence[OutboxMessage]) -> Published: ...

    async def acknowledgement(
        self, conn: AsyncConnection[Any], published: Published
    ) -> bytes | None: ...

    async def round_done(
        self, conn: AsyncConnection[Any], batch: Sequence[OutboxMessage],
        published: Published | None,
    ) -> DrainResult: ...


Waiting = tuple[RoundMember, "asyncio.Future[DrainResult | None]"]


class ClaimRound:
    """One round at a time for the lanes of a database's outboxes that ask for one;
    those that ask while a round runs go together in the next."""

    def __init__(self, pool: ClaimPool, deadline: float, linger: float = 0.0) -> None:
        self._pool = pool
        self._deadline = deadline  # the lease TTL, as for a claim of one outbox
        self._linger = linger  # --poll-linger
        self._waiting: list[Waiting] = []
        self._asked = Signal()
        self._task = BackgroundTask("claim-round", self._run)
        self.rounds = 0  # rounds run, the claims they carried, the most in one
        self.claims = 0
        self.largest = 0
        self.failed = 0  # rounds that answered no one: their outboxes drained alone

    async def drain(self, member: RoundMember) -> DrainResult | None:
        """``member``'s round, claimed, published and acknowledged with the others';
        None when the round failed as a whole and ``member`` should drain alone."""
        future: asyncio.Future[DrainResult | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((member, future))
        self._asked.set()
        self._task.start()
        return await future  # cancelled before its round: the round leaves it out

    async def stop(self) -> None:
        await self._task.stop()
        for _, future in self._waiting:
            future.cancel()
        self._waiting = []

    async def _run(self) -> None:
        while True:
            idle_since = time.monotonic()
            await self._asked.wait()
            if self._linger > 0 and time.monotonic() - idle_since <= LONE_ASK_AFTER * self._linger:
                await asyncio.sleep(self._linger)  # the lanes right behind join this round
            self._asked.clear()
            taken, self._waiting = self._waiting, []
            taken = [(member, future) for member, future in taken if not future.done()]
            if taken:
                await self._round(taken)

    async def _round(self, taken: list[Waiting]) -> None:
        results: list[DrainResult | None] = [None] * len(taken)
        try:
            session = await self._pool.take()
        except asyncio.CancelledError:
            for _, future in taken:
                future.cancel()
            raise
        try:
            results = await self._run_round(session, [member for member, _ in taken])
        except asyncio.CancelledError:
            await session.discard()
            for _, future in taken:
                future.cancel()
            raise
        except Exception as exc:  # the round as a whole: each drains alone now
            self.failed += 1
            log.debug("a claim round of %d outboxes failed (%s); each drains alone",
                      len(taken), exc or type(exc))
            await session.discard()
        finally:
            await self._pool.give_back(session)
        for (_, future), result in zip(taken, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _run_round(
        self, session: DbSession, members: list[RoundMember]
    ) -> list[DrainResult | None]:
        leased = [member for member in members if member.leased()]
        if not leased:
            return [DrainResult() for _ in members]
        conn = await session.connection()
        async with asyncio.timeout(self._deadline):
            batches = await self._claim(conn, leased)
            pairs = zip(leased, batches, strict=True)
            published = await asyncio.gather(
                *(self._publish(member, batch) for member, batch in pairs),
                return_exceptions=True,
            )
            await self._acknowledge(conn, leased, published)
        self.rounds += 1
        self.claims += len(leased)
        self.largest = max(self.largest, len(leased))
        done = {}
        for member, batch, outcome in zip(leased, batches, published, strict=True):
            done[id(member)] = await self._result(conn, member, batch, outcome)
        return [done.get(id(member), DrainResult()) for member in members]

    async def _claim(
        self, conn: AsyncConnection[Any], members: list[RoundMember]
    ) -> list[list[OutboxMessage]]:
        """Every member's lock and claim in one query: BEGIN, then two results each."""
        statements = [BEGIN_READ_COMMITTED, *(m.claim_statements(conn) for m in members)]
        cursor = conn.cursor(row_factory=message_row)
        register_claim_text_loaders(cursor.adapters)
        try:
            await cursor.execute(b";\n".join(statements), prepare=False)
            batches = []
            for _ in members:
                cursor.nextset()  # past the previous statement
                cursor.nextset()  # past the lock: this member's claimed rows
                batches.append(await cursor.fetchall())
            return batches
        finally:
            await cursor.close()

    @staticmethod
    async def _publish(member: RoundMember, batch: list[OutboxMessage]) -> Published | None:
        return await member.publish(batch) if batch else None

    @staticmethod
    async def _acknowledge(
        conn: AsyncConnection[Any],
        members: list[RoundMember],
        published: list[Published | BaseException | None],
    ) -> None:
        """Each published batch's acknowledgement, then the one COMMIT; a batch whose
        publish failed is left as claimed (its locks end with the COMMIT)."""
        writes = []
        for member, outcome in zip(members, published, strict=True):
            if isinstance(outcome, Published):
                write = await member.acknowledgement(conn, outcome)
                if write is not None:
                    writes.append(write)
        await conn.execute(b";\n".join((*writes, b"COMMIT")), prepare=False)

    @staticmethod
    async def _result(
        conn: AsyncConnection[Any],
        member: RoundMember,
        batch: list[OutboxMessage],
        outcome: Published | BaseException | None,
    ) -> DrainResult:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):
                raise outcome
            if not isinstance(outcome, RelayError):  # a bug, not an outage: keep its traceback
                log.error("unexpected error while publishing", exc_info=outcome)
            return DrainResult(claimed=len(batch), error=f"{type(outcome).__name__}: {outcome}")
        return await member.round_done(conn, batch, outcome)
