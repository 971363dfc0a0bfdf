"""Retention in CDC mode: deletes what the relay published, once it is older than the
retention. Any relay may run it (rows are locked with SKIP LOCKED).

Two kinds of rows count as published. Rows captured from the stream are never marked
sent: they are published once the watermark in ``cdc_state`` covers their transaction.
Rows published from the table (the snapshot on a first start or after a lost slot) are
marked sent, like in polling mode, and go by their ``sent_at``. A Debezium table is the
application's: only the relay's own table is purged by the watermark."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from relay.cdc.queries import cdc_query
from relay.cdc.settings import CdcNames
from relay.db import DbSession
from relay.errors import RelayError
from relay.outbox_rows import PURGE_CHUNK, PURGE_CHUNKS_PER_ROUND, purge_sent
from relay.tasks import wait_any

log = logging.getLogger(__name__)

RETENTION_EVERY = 10.0


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


async def run_retention(
    session: DbSession, names: CdcNames, retention: float, stopping: asyncio.Event
) -> None:
    """Purge every ``RETENTION_EVERY`` seconds until ``stopping``; failures only log."""
    while not stopping.is_set():
        try:
            deleted = await purge_published(session, names, retention)
            if deleted:
                log.info("retention removed %d published messages", deleted)
        except (RelayError, psycopg.Error) as exc:
            log.warning("retention purge failed (will retry): %s", exc)
            await session.discard()
        await wait_any(stopping, timeout=RETENTION_EVERY)
