"""The claim lane's statements: the claim (as a pipeline, or as one simple query for a
lane on light traffic) and the acknowledgement with its COMMIT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from psycopg import AsyncClientCursor, AsyncConnection, sql

from relay.model import OutboxMessage
from relay.outbox_rows import (
    bigint_array,
    message_row,
    register_claim_loaders,
    register_claim_text_loaders,
)
from relay.sqlfiles import query

# READ COMMITTED whatever the server's default: the claim after the lock must take a
# snapshot of its own (see lock_leased_buckets), which REPEATABLE READ would not.
BEGIN_READ_COMMITTED = b"BEGIN ISOLATION LEVEL READ COMMITTED"


async def lock_and_claim(
    conn: AsyncConnection[Any], schema: str, params: Mapping[str, Any]
) -> list[OutboxMessage]:
    """BEGIN, ``lock_leased_buckets``, then ``claim_batch``: the claimed rows, the
    transaction left open with the rows and the buckets locked.

    Three statements in one pipeline, so one round trip: at 100 msg/s nearly every round
    claims one message or none, and its round trips cost the relay more than its rows.
    Each is still a statement of its own, so the claim's snapshot follows the locks.
    """
    async with conn.pipeline():
        await conn.execute(BEGIN_READ_COMMITTED)
        await conn.execute(query("lock_leased_buckets", schema), params)
        cursor = conn.cursor(row_factory=message_row, binary=True)
        register_claim_loaders(cursor.adapters)
        await cursor.execute(query("claim_batch", schema), params)
    try:
        return await cursor.fetchall()
    finally:
        await cursor.close()


class SimpleClaim:
    """What ``lock_and_claim`` does, as one simple-protocol query of three statements
    (each still a statement, with a snapshot, of its own), the rows in text format.

    For a lane whose rounds claim a few rows (light traffic): the pipeline's machinery
    (a turn of psycopg's generators and a poll of the socket per statement) cost the
    relay more CPU than the round's rows, where a simple query is one send and one read.
    A lane's claim parameters never change, so the query is rendered once, on the first
    claim; binary rows stay cheaper for a large batch, which ``lock_and_claim`` takes.
    """

    def __init__(self, schema: str, params: Mapping[str, Any]) -> None:
        self._schema = schema
        self._params = params
        self._body: bytes | None = None
        self._statement: bytes | None = None

    def body(self, conn: AsyncConnection[Any]) -> bytes:
        """The lock and the claim, without the BEGIN: two statements, two results (a
        claim round puts several outboxes' in one transaction, relay.poll.rounds)."""
        if self._body is None:
            self._body = self._render(conn)
        return self._body

    async def __call__(
        self, conn: AsyncConnection[Any], before: bytes | None = None
    ) -> list[OutboxMessage]:
        """``before``: the last batch's acknowledgement and COMMIT (two statements), sent
        in the same query ahead of this claim's transaction."""
        if self._statement is None:
            self._statement = b";\n".join((BEGIN_READ_COMMITTED, self.body(conn)))
        cursor = conn.cursor(row_factory=message_row)
        register_claim_text_loaders(cursor.adapters)
        statement = self._statement if before is None else b";\n".join((before, self._statement))
        try:
            await cursor.execute(statement, prepare=False)
            if before is not None:
                cursor.nextset()  # past the acknowledgement
                cursor.nextset()  # past its COMMIT
            cursor.nextset()  # past BEGIN
            cursor.nextset()  # past the lock: the claim's rows
            return await cursor.fetchall()
        finally:
            await cursor.close()

    def _render(self, conn: AsyncConnection[Any]) -> bytes:
        mogrify = AsyncClientCursor(conn).mogrify
        return b";\n".join(
            (
                mogrify(query("lock_leased_buckets", self._schema), self._params).encode(),
                mogrify(query("claim_batch", self._schema), self._params).encode(),
            )
        )


async def lock_and_claim_simply(
    conn: AsyncConnection[Any], schema: str, params: Mapping[str, Any]
) -> list[OutboxMessage]:
    """``lock_and_claim`` as one simple query (see SimpleClaim)."""
    return await SimpleClaim(schema, params)(conn)


class SentAndCommit:
    """``acknowledge`` (delete_sent or mark_sent) for some seqs, then COMMIT: one
    simple-protocol query. If the write fails, PostgreSQL skips the COMMIT.

    The statement is rendered once; each batch only puts its seqs in, as an array
    literal of integers (digits, minus signs and commas need no quoting). A cursor's
    ``mogrify`` per batch cost more than the rest of building it.
    """

    PLACEHOLDER = b"%(seqs)s"

    def __init__(self, acknowledge: sql.Composed) -> None:
        self._acknowledge = acknowledge
        self._parts: tuple[bytes, bytes] | None = None

    def statement(self, conn: AsyncConnection[Any], seqs: Sequence[int]) -> bytes:
        return self.write(conn, seqs) + b";\nCOMMIT"

    def write(self, conn: AsyncConnection[Any], seqs: Sequence[int]) -> bytes:
        """The acknowledgement alone, without the COMMIT (a claim round commits several
        outboxes' at once, relay.poll.rounds)."""
        if self._parts is None:
            self._parts = self._split(self._acknowledge.as_bytes(conn))
        before, after = self._parts
        return b"".join((before, b"'", bigint_array(seqs).encode(), b"'", after))

    @classmethod
    def _split(cls, rendered: bytes) -> tuple[bytes, bytes]:
        before, found, after = rendered.partition(cls.PLACEHOLDER)
        if not found or b"%" in before + after:  # mogrify would unescape a %%
            raise ValueError(f"not an acknowledgement with one {cls.PLACEHOLDER!r}")
        return before, after


def sent_and_commit_statement(
    conn: AsyncConnection[Any], acknowledge: sql.Composed, seqs: Sequence[int]
) -> bytes:
    """``acknowledge`` for ``seqs``, then COMMIT, as one query (see SentAndCommit)."""
    return SentAndCommit(acknowledge).statement(conn, seqs)
