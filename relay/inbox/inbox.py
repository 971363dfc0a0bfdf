"""The consumer inbox: process each message id at most once per consumer.

``Inbox`` (psycopg ``Connection`` / ``ConnectionPool``) and ``AsyncInbox``
(``AsyncConnection`` / ``AsyncConnectionPool``) are thin twins over ``InboxSpec`` and
``relay/sql/inbox.sql``. Where the work happens:

- connection not in a transaction (autocommit, or idle): the inbox opens one and commits
  it when the handler returns; ``InboxResult.committed`` is True;
- connection already in a transaction: the inbox uses a savepoint and leaves the commit to
  you; ``committed`` is False. A handler that raises rolls back to the savepoint, so your
  transaction stays usable and the id stays unrecorded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from uuid import UUID

import psycopg
from psycopg import errors
from psycopg.rows import scalar_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from relay.inbox.core import (
    InboxClaim,
    InboxResult,
    InboxSpec,
    message_key,
    opens_transaction,
    schema_missing,
)

SyncHandler = Callable[[psycopg.Connection[Any]], Any]
AsyncHandler = Callable[[psycopg.AsyncConnection[Any]], Awaitable[Any]]


class Inbox(InboxSpec):
    """Deduplicate one consumer's messages in its own PostgreSQL transactions.

    ``Inbox(consumer="billing", schema="outbox")``; with ``keep_results=True`` the
    handler's return value (JSON) is stored and handed back to later duplicates.
    """

    def process(
        self,
        conn: psycopg.Connection[Any] | ConnectionPool[Any],
        message_id: str | UUID,
        handler: SyncHandler,
    ) -> InboxResult:
        """Run ``handler(conn)`` unless ``message_id`` was already processed by this consumer.

        The id is recorded in the same transaction as the handler's writes. A concurrent
        delivery of the same id waits for this transaction, then skips (it committed) or
        runs (it rolled back). With a pool, a connection is borrowed for the call.
        """
        if isinstance(conn, ConnectionPool):
            with conn.connection() as pooled:
                return self.process(pooled, message_id, handler)
        with self.claim(conn, message_id) as claim:
            if not claim.duplicate:
                value = handler(conn)
                if self.keep_results:
                    claim.keep_result(value)
                claim.result = value
        return InboxResult(claim.duplicate, claim.result, claim.message_id, claim.committed)

    @contextmanager
    def claim(self, conn: psycopg.Connection[Any], message_id: str | UUID) -> Iterator[InboxClaim]:
        """Record ``message_id`` for the block's transaction; the block checks ``duplicate``.

        ``with inbox.claim(conn, id) as claim: if not claim.duplicate: apply(conn)``
        """
        if not isinstance(conn, psycopg.Connection):
            raise TypeError(
                f"Inbox needs a psycopg.Connection, got {type(conn).__name__} "
                "(use AsyncInbox with an AsyncConnection)"
            )
        key = message_key(message_id)
        owned = opens_transaction(conn)
        with conn.transaction():
            claim = self._claim(conn, key)
            yield claim
            params = self.result_params(claim)
            if params is not None:
                conn.execute(self.store_result_sql, params)
        claim.committed = owned

    def _claim(self, conn: psycopg.Connection[Any], key: str) -> InboxClaim:
        params = self.params(key)
        try:
            fresh = conn.execute(self.claim_sql, params).fetchone() is not None
        except errors.UndefinedTable as exc:
            raise schema_missing(self.schema, exc) from exc
        if fresh or not self.keep_results:
            return InboxClaim(key, duplicate=not fresh, keeps_results=self.keep_results)
        # a cursor of our own row factory: the caller's connection may make dicts of rows
        with conn.cursor(row_factory=scalar_row) as cursor:
            result = cursor.execute(self.stored_result_sql, params).fetchone()
        return InboxClaim(key, duplicate=True, result=result)


class AsyncInbox(InboxSpec):
    """The asyncio twin of :class:`Inbox`: same SQL, same guarantees, awaited handler."""

    async def process(
        self,
        conn: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any],
        message_id: str | UUID,
        handler: AsyncHandler,
    ) -> InboxResult:
        """Await ``handler(conn)`` unless ``message_id`` was already processed (see Inbox)."""
        if isinstance(conn, AsyncConnectionPool):
            async with conn.connection() as pooled:
                return await self.process(pooled, message_id, handler)
        async with self.claim(conn, message_id) as claim:
            if not claim.duplicate:
                value = await handler(conn)
                if self.keep_results:
                    claim.keep_result(value)
                claim.result = value
        return InboxResult(claim.duplicate, claim.result, claim.message_id, claim.committed)

    @asynccontextmanager
    async def claim(
        self, conn: psycopg.AsyncConnection[Any], message_id: str | UUID
    ) -> AsyncIterator[InboxClaim]:
        """``async with inbox.claim(conn, id) as claim: if not claim.duplicate: ...``"""
        if not isinstance(conn, psycopg.AsyncConnection):
            raise TypeError(
                f"AsyncInbox needs a psycopg.AsyncConnection, got "
                f"{type(conn).__name__} (use Inbox with a Connection)"
            )
        key = message_key(message_id)
        owned = opens_transaction(conn)
        async with conn.transaction():
            claim = await self._claim(conn, key)
            yield claim
            params = self.result_params(claim)
            if params is not None:
                await conn.execute(self.store_result_sql, params)
        claim.committed = owned

    async def _claim(self, conn: psycopg.AsyncConnection[Any], key: str) -> InboxClaim:
        params = self.params(key)
        try:
            cursor = await conn.execute(self.claim_sql, params)
            fresh = await cursor.fetchone() is not None
        except errors.UndefinedTable as exc:
            raise schema_missing(self.schema, exc) from exc
        if fresh or not self.keep_results:
            return InboxClaim(key, duplicate=not fresh, keeps_results=self.keep_results)
        async with conn.cursor(row_factory=scalar_row) as stored:
            await stored.execute(self.stored_result_sql, params)
            result = await stored.fetchone()
        return InboxClaim(key, duplicate=True, result=result)
