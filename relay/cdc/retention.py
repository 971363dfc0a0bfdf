"""Retention in CDC mode: deletes what the relay published, once it is older than the
retention. Any relay may run it (rows are locked with SKIP LOCKED).

Two kinds of rows count as published. Rows captured from the stream are never marked
sent: they are published once the watermark in ``cdc_state`` covers their transaction.
Rows published from the table (the snapshot on a first start or after a lost slot) are
marked sent, like in polling mode, and go by their ``sent_at``. A Debezium table is the
application's: only the relay's own table is purged by the watermark.

A pass runs when it can delete something: when the oldest row it could delete ages out,
which the database tells after each pass (``retention_due``), and ``--retention`` after
the outbox handled messages (published, set aside, parked). An outbox with nothing to age out
asks again every ``IDLE_RETENTION_EVERY`` (one cheap statement), for rows the relay did
not see go (another relay published them, a delayed message's marked-sent copy): a
relay of hundreds of idle outboxes does not run two DELETEs per outbox every few
seconds to find nothing."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

import psycopg

from relay.cdc.queries import cdc_query
from relay.cdc.settings import CdcNames
from relay.db import DbSession
from relay.errors import RelayError
from relay.outbox_rows import PURGE_CHUNK, PURGE_CHUNKS_PER_ROUND, purge_sent
from relay.tasks import wait_any

log = logging.getLogger(__name__)

RETENTION_EVERY = 10.0  # the tick: how late a pass may be once it can delete something
IDLE_RETENTION_EVERY = 60.0  # how often an outbox with nothing to age out asks again


async def purge_published(session: DbSession, names: CdcNames, retention: float) -> int:
    """Delete published rows older than ``retention`` seconds, a chunk at a time."""
    total = await purge_sent(session, names.schema, retention)
    if names.debezium:
        return total
    params = {"retention": retention, "limit": PURGE_CHUNK, "slot": names.slot}
    for _ in range(PURGE_CHUNKS_PER_ROUND):
        async with session.turn() as conn:  # a chunk at a time: others may share it
            cursor = await conn.execute(cdc_query("purge_published", names.schema), params)
        total += cursor.rowcount
        if cursor.rowcount < PURGE_CHUNK:
            break
    return total


async def seconds_until_due(session: DbSession, names: CdcNames, retention: float) -> float:
    """Seconds (by the database's clock) until the oldest row a pass could delete is
    older than ``retention``: zero or less when one is already; infinite when none."""
    async with session.turn() as conn:
        cursor = await conn.execute(cdc_query("retention_due", names.schema),
                                    {"retention": retention})
        row = await cursor.fetchone()
    return math.inf if row is None or row[0] is None else float(row[0])


class RetentionPace:
    """When the next pass is due: when the oldest row a pass could delete ages out (as
    the database said after the last pass or look), or ``retention`` after the outbox
    handled messages (``handled`` moved: those rows are that old by then at the latest).
    An outbox with nothing to age out looks again every ``IDLE_RETENTION_EVERY`` (one
    statement; a pass is two or three)."""

    def __init__(self, retention: float, handled: Callable[[], int]) -> None:
        self._retention = retention
        self._handled = handled
        self._seen = handled()
        self._due_at = 0.0  # the first tick passes: what a previous run left may be due
        self._look_at = math.inf

    def pass_due(self, now: float) -> bool:
        handled = self._handled()
        if handled != self._seen:
            self._seen = handled
            self._due_at = min(self._due_at, now + self._retention)
        return now >= self._due_at

    def look_due(self, now: float) -> bool:
        return now >= self._look_at

    def after_look(self, now: float, due_in: float) -> None:
        """``due_in``: what ``seconds_until_due`` said. Rows due already but not deleted
        (the watermark does not cover them yet, or more than a round's chunks) are tried
        again on the next tick."""
        self._due_at = now + max(due_in, RETENTION_EVERY)
        self._look_at = now + IDLE_RETENTION_EVERY

    def after_failure(self, now: float) -> None:
        self._due_at = now + RETENTION_EVERY


async def run_retention(
    session: DbSession, names: CdcNames, retention: float, stopping: asyncio.Event,
    handled: Callable[[], int] = lambda: 0,
) -> None:
    """Purge when due (``RetentionPace``) until ``stopping``; failures only log.
    ``handled``: how many messages the outbox published, set aside or parked so far."""
    pace = RetentionPace(retention, handled)
    while not stopping.is_set():
        now = time.monotonic()
        try:
            if pace.pass_due(now):
                deleted = await purge_published(session, names, retention)
                if deleted:
                    log.info("retention removed %d published messages", deleted)
                pace.after_look(now, await seconds_until_due(session, names, retention))
            elif pace.look_due(now):
                pace.after_look(now, await seconds_until_due(session, names, retention))
        except (RelayError, psycopg.Error) as exc:
            log.warning("retention purge failed (will retry): %s", exc)
            pace.after_failure(now)
            await session.discard()
        await wait_any(stopping, timeout=RETENTION_EVERY)
