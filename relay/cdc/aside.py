"""CDC mode's failure model, the same as polling mode's: messages set aside.

The stream cannot wait on one message: commit order is global and the slot holds the
WAL of everything behind it. So a message the broker did not take on its first try (a
refusal, a nack, one held back behind a failed message of its key), and every later
message of a key that is held, is *set aside*: written to the outbox table in stream
order (``set_aside_at``, a new seq), in the same transaction as polling mode's writes
for the failure (an attempt and a key hold, or a dead letter). The stream then goes on
and may confirm the slot past it: the row is durable.

From the table the :class:`AsideDrain` publishes set-aside rows exactly as a polling
relay does (claim in seq order, skip held keys, ``plan_acknowledgement``): attempts up
to ``--max-attempts``, dead letters, ``--on-poison``. ``dead-letters retry`` puts a
message back set aside with its first seq, so it goes before what waited behind it.

A key stays *held* for the stream while it has set-aside rows to publish or a hold, so
its new messages queue behind them in the table. One publish runs at a time
(:attr:`AsideStore.turn`): a stream batch or a drain round; the held keys are re-read
after each drain round, so a key goes back to the stream only once nothing of it waits.

Every transaction here takes the slot's set-aside advisory lock first and checks that
this relay still leads: a leader deposed while frozen writes nothing once a new leader
has read the held keys (the session it writes on is not one the new leader ends).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import AsyncConnection

from relay.backoff import full_jitter
from relay.cdc.settings import CdcNames
from relay.db import DbSession
from relay.errors import DatabaseUnavailableError, LeaseLostError, RelayError, translate_db_error
from relay.model import OutboxMessage, Outcome
from relay.outbox_rows import (
    Acknowledgement,
    FailurePolicy,
    message_row,
    plan_acknowledgement,
    register_claim_loaders,
    write_acknowledgement,
)
from relay.sqlfiles import query
from relay.tasks import wait_any

log = logging.getLogger(__name__)

SQL_FILE = "cdc_set_aside.sql"
ASIDE_EVERY = 1.0  # look for set-aside rows at least this often (a person may retry one)
MIN_WAIT = 0.05  # never poll faster than this, whatever is due

Publish = Callable[[Sequence[OutboxMessage]], Awaitable[list[Outcome]]]


def aside_lock_key(slot: str) -> int:
    """The transaction-level advisory lock of a slot's set-aside rows (signed 64 bits)."""
    digest = hashlib.blake2b(f"outbox-relay-cdc-aside:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class AsideRound:
    """What one drain round did, and when the next set-aside row comes due."""

    claimed: int = 0
    delivered: int = 0
    outage: bool = False
    next_due: float | None = None


class AsideStore:
    """The set-aside rows of one outbox and the keys they hold, on a session of its own."""

    def __init__(
        self,
        session: DbSession,
        names: CdcNames,
        policy: FailurePolicy,
        *,
        leader_id: UUID,
        retention: float,
        batch_size: int,
        deadline: float,
    ) -> None:
        self._session = session
        self._schema = names.schema
        self._fence = {"lock_key": aside_lock_key(names.own_name), "slot": names.slot,
                       "leader_id": leader_id}  # fmt: skip
        self.policy = policy
        self._retention = retention
        self.batch_size = batch_size
        self._deadline = deadline
        self.held: set[str] = set()
        self.turn = asyncio.Lock()  # one publish at a time: a stream batch or a drain round
        self.wake = asyncio.Event()  # something was set aside

    def holding(self) -> bool:
        return bool(self.held)

    def holds(self, key: str | None) -> bool:
        """Must the stream set this key's messages aside (something of it waits)?"""
        return key is not None and key in self.held

    async def load(self) -> None:
        """Read the held keys (a new leader, or a new stream session)."""
        conn = await self._session.connection()
        try:
            async with asyncio.timeout(self._deadline):
                await self._begin_fenced(conn, wait=True)
                await self._refresh(conn)
                await conn.execute("COMMIT")
        except BaseException as exc:
            await self._session.discard()
            raise _translated(exc, "reading the set-aside messages") from None
        finally:
            await self._session.release()  # a pooled connection goes back after each use

    async def settle(self, messages: Sequence[OutboxMessage], ack: Acknowledgement) -> None:
        """Set ``messages`` aside in this order and write ``ack`` for them (its positions
        index ``messages``), in one transaction."""
        conn = await self._session.connection()
        try:
            async with asyncio.timeout(self._deadline):
                if not await self._begin_fenced(conn, wait=True):
                    raise LeaseLostError("another relay leads CDC now; not setting aside")
                cursor = await conn.execute(self._q("set_aside"), set_aside_params(messages))
                seqs = {row[0]: int(row[1]) for row in await cursor.fetchall()}
                positions = [seqs.get(message.id) for message in messages]
                await write_acknowledgement(
                    conn, self._schema, renumbered(ack, positions), retention=self._retention
                )
        except BaseException as exc:
            await self._session.discard()  # never ROLLBACK down a connection that hangs
            raise _translated(exc, "setting failed messages aside") from None
        finally:
            await self._session.release()
        self.held.update(m.key for m in messages if m.key is not None)
        self.wake.set()

    async def anything_set_aside(self) -> bool:
        """Is any row set aside or any key held? One statement, no lock and no
        transaction: what an idle drain asks before a fenced round of several round
        trips."""
        conn = await self._session.connection()
        try:
            async with asyncio.timeout(self._deadline):
                cursor = await conn.execute(self._q("anything_set_aside"))
                row = await cursor.fetchone()
        except BaseException as exc:
            await self._session.discard()
            raise _translated(exc, "looking for set-aside messages") from None
        finally:
            await self._session.release()
        # The held keys are left alone: a stream batch may set a message aside meanwhile
        # (it adds its key and wakes the drain), which this answer may predate.
        return bool(row and row[0])

    async def drain_once(self, publish: Publish, may_publish: Callable[[], bool]) -> AsideRound:
        """Claim due set-aside rows, publish them, write the outcome (polling mode's
        rules), then re-read the held keys and when the next row comes due."""
        conn = await self._session.connection()
        try:
            async with asyncio.timeout(self._deadline):
                done = await self._drain(conn, publish, may_publish)
                await self._refresh(conn)
                cursor = await conn.execute(self._q("next_due"))
                row = await cursor.fetchone()
        except BaseException as exc:
            await self._session.discard()
            raise _translated(exc, "publishing set-aside messages") from None
        finally:
            await self._session.release()
        due = None if row is None or row[0] is None else float(row[0])
        return AsideRound(done.claimed, done.delivered, done.outage, due)

    async def close(self) -> None:
        await self._session.close()

    async def _drain(
        self, conn: AsyncConnection[Any], publish: Publish, may_publish: Callable[[], bool]
    ) -> AsideRound:
        rows: list[OutboxMessage] = []
        if await self._begin_fenced(conn, wait=False):
            async with conn.cursor(row_factory=message_row, binary=True) as claim:
                register_claim_loaders(claim.adapters)
                await claim.execute(self._q("claim_set_aside"), {"limit": self.batch_size})
                rows = await claim.fetchall()
        if not rows:
            await conn.execute("COMMIT")
            return AsideRound()
        if not may_publish():
            raise LeaseLostError("this relay's CDC lease may have run out; not publishing")
        ack = plan_acknowledgement(rows, await publish(rows), self.policy)
        await write_acknowledgement(conn, self._schema, ack, retention=self._retention)
        if ack.dead_seqs:
            log.error("%d set-aside message(s) moved to the dead letters (%s)",
                      len(ack.dead_seqs), ack.dead_errors[0])  # fmt: skip
        return AsideRound(len(rows), len(ack.sent), ack.outage)

    async def _begin_fenced(self, conn: AsyncConnection[Any], *, wait: bool) -> bool:
        """BEGIN, take the set-aside lock (or try to), and say whether this relay holds
        it and still leads. READ COMMITTED, and each check a statement of its own after
        the lock: it sees everything a previous holder committed (see claim_batch)."""
        await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        lock = "lock_set_aside" if wait else "try_lock_set_aside"
        cursor = await conn.execute(self._q(lock), self._fence)
        locked = await cursor.fetchone()
        if not wait and not (locked and locked[0]):
            return False
        cursor = await conn.execute(self._q("is_leader"), self._fence)
        leads = await cursor.fetchone()
        return bool(leads and leads[0])

    async def _refresh(self, conn: AsyncConnection[Any]) -> None:
        cursor = await conn.execute(self._q("held_keys"))
        self.held = {row[0] for row in await cursor.fetchall()}

    def _q(self, name: str) -> Any:
        return query(name, self._schema, SQL_FILE)


class AsideDrain:
    """Publishes the set-aside rows as they come due, until halted (the stream session's
    companion: it runs while this relay leads and streams)."""

    def __init__(
        self,
        store: AsideStore,
        publish: Publish,
        may_publish: Callable[[], bool],
        on_delivered: Callable[[int], None],
        *,
        every: float = ASIDE_EVERY,
        covered: Callable[[], bool] = lambda: False,
    ) -> None:
        self._store = store
        self._every = every  # the longest wait between rounds
        self._covered = covered  # a shared look wakes this drain when it has work
        self._publish = publish
        self._may_publish = may_publish
        self._on_delivered = on_delivered
        self._failures = 0

    async def run(self, halt: asyncio.Event) -> None:
        store = self._store
        quiet = False  # the last round found nothing set aside and no key held
        while not halt.is_set():
            woken = store.wake.is_set()  # something was set aside: a round, no look
            store.wake.clear()
            try:
                if quiet and not woken and not await store.anything_set_aside():
                    # Usually nothing is set aside: one statement instead of a fenced
                    # round (BEGIN, the lock, the leader check, the claim, COMMIT and
                    # two reads), which an idle relay would run every period.
                    await self._wait(halt, self._every)
                    continue
                async with store.turn:
                    done = await store.drain_once(self._publish, self._may_publish)
            except RelayError as exc:
                await self._back_off(halt, f"{type(exc).__name__}: {exc}")
                continue
            self._on_delivered(done.delivered)
            if done.outage:
                await self._back_off(halt, "the broker confirmed none of them")
                continue
            self._failures = 0
            quiet = done.next_due is None and not store.holding()
            await self._wait(halt, self._next_wait(done))

    async def _wait(self, halt: asyncio.Event, timeout: float) -> None:
        """Until woken, or ``timeout``; while a shared look answers for this outbox, it
        wakes the drain when a row may be claimed, and a round of its own (a fenced
        transaction of several round trips, for each of hundreds of outboxes) is put off."""
        store = self._store
        await wait_any(halt, store.wake, timeout=timeout)
        while timeout > 0 and not halt.is_set() and not store.wake.is_set() and self._covered():
            await wait_any(halt, store.wake, timeout=self._every)

    def _next_wait(self, done: AsideRound) -> float:
        if done.claimed >= self._store.batch_size:
            return 0.0
        if done.next_due is None:
            return self._every
        return min(self._every, max(MIN_WAIT, done.next_due))

    async def _back_off(self, halt: asyncio.Event, why: str) -> None:
        policy = self._store.policy
        delay = full_jitter(self._failures, base=policy.retry_base, cap=policy.retry_cap)
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        log.log(level, "publishing set-aside messages failed (%s); again in %.1fs", why, delay)
        await wait_any(halt, timeout=delay)


def set_aside_params(messages: Sequence[OutboxMessage]) -> dict[str, list[Any]]:
    """The ``set_aside`` columns of ``messages``; each id once (the first, in order)."""
    columns: dict[str, list[Any]] = {
        name: [] for name in ("ids", "topics", "keys", "payloads", "payload_bytes",
                              "content_types", "headers", "created")
    }  # fmt: skip
    seen = set()
    for message in messages:
        if message.id in seen:
            continue
        seen.add(message.id)
        as_json = _json_text(message)
        columns["ids"].append(message.id)
        columns["topics"].append(message.topic)
        columns["keys"].append(message.key)
        columns["payloads"].append(as_json)
        columns["payload_bytes"].append(message.payload if as_json is None else None)
        columns["content_types"].append(message.content_type)
        columns["headers"].append(orjson.dumps(dict(message.headers)).decode())
        columns["created"].append(message.created_at)
    return columns


def _json_text(message: OutboxMessage) -> str | None:
    """The payload as JSON text when it is JSON (shown as such by the dead-letter tools),
    else None: stored as bytes, which publish the same."""
    if message.payload is None or message.content_type != "application/json":
        return None
    try:
        orjson.loads(message.payload)
        return message.payload.decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None


def renumbered(ack: Acknowledgement, seqs: Sequence[int | None]) -> Acknowledgement:
    """``ack`` with positions (indexes into what was set aside) turned into the seqs the
    rows got; a message that was not set aside (already there, sent, a dead letter) is
    left out: it was dealt with before."""
    out = Acknowledgement(released_keys=list(ack.released_keys))
    for position, error, delay in zip(ack.failed_seqs, ack.failed_errors, ack.failed_delays,
                                      strict=True):  # fmt: skip
        if (seq := seqs[position]) is not None:
            out.failed_seqs.append(seq)
            out.failed_errors.append(error)
            out.failed_delays.append(delay)
    for position, error, reason in zip(ack.dead_seqs, ack.dead_errors, ack.dead_reasons,
                                       strict=True):  # fmt: skip
        if (seq := seqs[position]) is not None:
            out.dead_seqs.append(seq)
            out.dead_errors.append(error)
            out.dead_reasons.append(reason)
    for key, position, error, delay, forever in zip(
        ack.hold_keys, ack.hold_seqs, ack.hold_errors, ack.hold_delays, ack.hold_forever,
        strict=True,
    ):
        if (seq := seqs[position]) is not None:
            out.hold(key, seq, error, delay, forever)
    return out


def _translated(exc: BaseException, doing: str) -> BaseException:
    if isinstance(exc, psycopg.Error):
        return translate_db_error(exc, doing)
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailableError(f"{doing} did not finish in time; abandoned")
    return exc
