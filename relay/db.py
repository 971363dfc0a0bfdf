"""One long-lived PostgreSQL connection per duty (claiming, leases, housekeeping,
listening): a stuck statement on one duty cannot starve the others (bulkheads)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import psycopg

from relay.dsn import describe_dsn
from relay.eager_reads import EagerReadConnection
from relay.errors import DatabaseUnavailableError, RelayError, translate_db_error
from relay.secrets import redact

log = logging.getLogger(__name__)

# For the sessions that claim, acknowledge and purge outbox rows: every statement there
# touches a batch of rows through an index, and the table's statistics are often stale
# (it turns over in seconds), so the planner is kept to index plans.
# - No sorts. The claim and the purges lock the first N rows in index order; a plan that
#   sorts reads every candidate row before it can lock the first (LockRows sits between
#   the LIMIT and the sort, so the sort is never bounded). Statistics taken while the
#   table was nearly empty but bloated made a sequential scan plus sort look cheapest: in
#   a soak that plan spilled to disk on every claim and the relay fell to a fraction of
#   its rate until the next autovacuum (benchmarks/README.md).
# - No sequential scans. The acknowledgement's prepared DELETE kept a generic plan made
#   while the table was empty, a sequential scan, while the heap grew between vacuums:
#   its server time per batch grew with the heap instead of with the batch.
# - No JIT: it never pays off for statements that run in milliseconds.
INDEX_PLAN_SETTINGS = {"enable_sort": "off", "enable_seqscan": "off", "jit": "off"}


class DbSession:
    """A lazily (re)opened connection for one duty of the relay.

    ``settings`` are session GUCs applied after connecting (statement_timeout, ...).
    Callers use :meth:`connection`; after a failure they call :meth:`discard` so the next
    call reconnects. Errors come out translated into the relay's error tree.
    """

    def __init__(
        self,
        dsn: str,
        duty: str,
        *,
        connect_timeout: float,
        settings: Mapping[str, str] | None = None,
        autocommit: bool = True,
    ) -> None:
        self._dsn = dsn
        self.duty = duty
        self._connect_timeout = connect_timeout
        self._settings = dict(settings or {})
        self._autocommit = autocommit
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.connects = 0  # connections opened (more than one: it reconnected)
        self.discards = 0  # connections thrown away after a failure
        # Held for a unit of work (a transaction, a few statements) where the session is
        # shared by several outboxes' duties (SharedSession); uncontended otherwise.
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection, for this caller alone until the block ends."""
        async with self._turn:
            yield await self.connection()

    async def release(self) -> None:
        """Done with the connection until the next call (a pooled session hands it back)."""

    async def discard_if_unusable(self) -> None:
        """Discard the connection if a failure left it unfit, waiting for the turn first:
        never under another caller's statement."""
        async with self._turn:
            if not usable(self._conn):
                await self.discard()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        await self.discard()
        self._conn = await open_connection(
            self._dsn,
            duty=self.duty,
            connect_timeout=self._connect_timeout,
            settings=self._settings,
            autocommit=self._autocommit,
        )
        self.connects += 1
        return self._conn

    async def discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self.discards += 1
        if conn is not None and not conn.closed:
            # the connection is being thrown away because it failed already
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def close(self) -> None:
        discards = self.discards
        await self.discard()
        self.discards = discards  # closing at stop is not a failure


async def open_connection(
    dsn: str,
    *,
    duty: str,
    connect_timeout: float,
    settings: Mapping[str, str],
    autocommit: bool = True,
) -> psycopg.AsyncConnection[Any]:
    """Connect with a timeout and apply session settings; failures name the target."""
    try:
        conn = await EagerReadConnection.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=max(1, round(connect_timeout)),
            application_name=f"outbox-relay/{duty}",
        )
    except psycopg.Error as exc:
        raise connection_failure(dsn, exc) from None
    try:
        for name, value in settings.items():
            await conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        if not autocommit:
            await conn.commit()
    except psycopg.Error as exc:
        await conn.close()
        raise translate_db_error(exc, f"configuring the {duty} connection") from None
    except BaseException:  # cancelled while configuring: nobody else holds it to close
        await conn.close()
        raise
    return conn


class SharedSession(DbSession):
    """One outbox's use of a session its database's other outboxes use too
    (relay.poll.shared): work goes through :meth:`turn`; a failure discards the
    connection only if it is no longer usable, and closing leaves it to the others."""

    def __init__(self, shared: DbSession) -> None:
        self._shared = shared
        self.duty = shared.duty
        self.connects = self.discards = 0  # the shared session counts them
    @property
    def connected(self) -> bool:
        return self._shared.connected

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        return await self._shared.connection()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._shared.turn() as conn:
            yield conn

    async def discard(self) -> None:
        await self._shared.discard_if_unusable()

    async def close(self) -> None:
        """The database's other outboxes go on using it (relay.poll.shared closes it)."""


def usable(conn: psycopg.AsyncConnection[Any] | None) -> bool:
    """Open, not broken, and outside any transaction: fit for the next caller."""
    if conn is None or conn.closed or conn.broken:
        return False
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def connection_failure(dsn: str, exc: psycopg.Error) -> RelayError:
    """The error for a failed connect: names the target, never the password."""
    first_line = redact(
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    )
    sqlstate = exc.sqlstate or ""
    if sqlstate.startswith("28") or sqlstate == "3D000":
        # invalid authorization or unknown database: retrying will not help
        return translate_db_error(exc, f"cannot connect to PostgreSQL at {describe_dsn(dsn)}")
    return DatabaseUnavailableError(
        f"cannot connect to PostgreSQL at {describe_dsn(dsn)}: {first_line}"
    )


def lock_space(schema: str) -> int:
    """The advisory-lock namespace of a schema's buckets (a signed 32-bit integer)."""
    return zlib.crc32(f"outbox-relay:{schema}".encode()) - 2**31


async def first_row_of_each(cursor: psycopg.AsyncCursor[Any], count: int) -> list[Any]:
    """The first row (or None) of each of the ``count`` results of a query of several
    statements."""
    rows = []
    for _ in range(count):
        rows.append(await cursor.fetchone())
        cursor.nextset()
    return rows
