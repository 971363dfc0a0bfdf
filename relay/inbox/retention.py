"""Inbox retention: forget ids older than the dedupe window, in small batches.

An id is only worth keeping while a duplicate of it can still arrive: the default window
of 7 days matches Kafka's default topic retention. Each batch is its own short transaction
and skips rows a consumer has locked, so purging never makes a consumer wait for long.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql

from relay.config import DEFAULT_SCHEMA
from relay.inbox.core import INBOX_SQL, check_consumer, check_schema, opens_transaction
from relay.sqlfiles import query

DEFAULT_DEDUPE_WINDOW = timedelta(days=7)
DEFAULT_PURGE_BATCH = 1000
MAX_PURGE_BATCH = 1_000_000  # one short transaction each


def _purge_statement(
    schema: str, older_than: timedelta | float, consumer: str | None, batch_size: int
) -> tuple[sql.Composed, dict[str, Any]]:
    seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else older_than
    if seconds < 0:
        raise ValueError(f"the dedupe window must not be negative, got {older_than!r}")
    if batch_size < 1:
        raise ValueError(f"the purge batch size must be at least 1, got {batch_size}")
    check_schema(schema)
    if consumer is not None:
        check_consumer(consumer)
    params = {"older_than": seconds, "consumer": consumer, "limit": batch_size}
    return query("purge_inbox", schema, INBOX_SQL), params


def _require_own_transactions(
    conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any],
) -> None:
    if not opens_transaction(conn):
        raise psycopg.ProgrammingError(
            "purge_inbox commits every batch on its own so it never holds locks for long; "
            "call it on a connection that is not inside a transaction"
        )


def purge_inbox(
    conn: psycopg.Connection[Any],
    schema: str = DEFAULT_SCHEMA,
    older_than: timedelta | float = DEFAULT_DEDUPE_WINDOW,
    *,
    consumer: str | None = None,
    batch_size: int = DEFAULT_PURGE_BATCH,
) -> int:
    """Delete inbox entries processed more than ``older_than`` (seconds or timedelta) ago.

    Only ``consumer``'s entries when given. Commits after every batch of ``batch_size``
    rows; returns how many entries were deleted.
    """
    statement, params = _purge_statement(schema, older_than, consumer, batch_size)
    _require_own_transactions(conn)
    total = 0
    while True:
        with conn.transaction():
            deleted = conn.execute(statement, params).rowcount
        total += deleted
        if deleted < batch_size:
            return total


async def purge_inbox_async(
    conn: psycopg.AsyncConnection[Any],
    schema: str = DEFAULT_SCHEMA,
    older_than: timedelta | float = DEFAULT_DEDUPE_WINDOW,
    *,
    consumer: str | None = None,
    batch_size: int = DEFAULT_PURGE_BATCH,
) -> int:
    """The asyncio twin of :func:`purge_inbox`."""
    statement, params = _purge_statement(schema, older_than, consumer, batch_size)
    _require_own_transactions(conn)
    total = 0
    while True:
        async with conn.transaction():
            cursor = await conn.execute(statement, params)
        total += cursor.rowcount
        if cursor.rowcount < batch_size:
            return total
