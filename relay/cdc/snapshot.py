"""Publish the outbox rows that are already there before streaming starts.

On a first start (say, switching from polling mode) the pending rows are published
first (a Debezium table's rows only with ``--cdc-snapshot existing``: it has no "sent"
marker); after a lost slot, the rows its watermark does not cover. The rows are read in
the snapshot the new slot exported, so the stream continues exactly where the snapshot
ends: no gap, no overlap. (When a snapshot is resumed after a crash there is no exported
snapshot any more; a fresh one overlaps the stream, which only causes duplicates.)
The snapshot's xmin becomes the new watermark: every transaction below it is published.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import orjson
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from relay.cdc.mapping import ID_NAMESPACE, BoundMapping, MappingError, RowMapping
from relay.cdc.outgoing import Item, Unmappable
from relay.cdc.publisher import BatchPublisher
from relay.cdc.queries import cdc_query, cdc_query_with_names
from relay.cdc.settings import CdcNames
from relay.db import DbSession
from relay.errors import translate_db_error
from relay.model import OutboxMessage

log = logging.getLogger(__name__)

MarkSent = Callable[[list[UUID]], Awaitable[None]]


@dataclass(frozen=True)
class SnapshotRequest:
    snapshot_name: str | None  # exported by CREATE_REPLICATION_SLOT, or None: a fresh one
    covered_xmin: str | None  # republish rows this watermark does not cover; None: all
    position: int  # the slot's consistent point: snapshot events come before it


class Snapshot:
    def __init__(
        self,
        session: DbSession,
        names: CdcNames,
        mapping: RowMapping,
        publisher: BatchPublisher,
        *,
        batch_size: int,
        mark_sent: MarkSent | None,
    ) -> None:
        self._session = session
        self._names = names
        self._mapping = mapping
        self._publisher = publisher
        self._batch_size = batch_size
        self._mark_sent = mark_sent
        self.published = 0

    async def run(self, request: SnapshotRequest, stopping: asyncio.Event) -> str | None:
        """Publish the rows; return the snapshot's xmin, or None if ``stopping`` cut it."""
        conn = await self._session.connection()
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if request.snapshot_name is not None:
                await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    sql.Literal(request.snapshot_name)))
            cursor = await conn.execute(cdc_query("snapshot_xmin", self._names.schema))
            row = await cursor.fetchone()
            xmin = str(row[0]) if row else None
            completed = await self._publish_rows(conn, request, stopping)
            await conn.execute("COMMIT")
        except psycopg.Error as exc:
            await self._session.discard()
            raise translate_db_error(exc, "reading the outbox snapshot") from None
        except BaseException:
            await self._session.discard()
            raise
        return xmin if completed else None

    async def close(self) -> None:
        await self._session.close()

    def _statement(self, covered: str | None) -> sql.Composed | None:
        if not self._names.debezium:
            return cdc_query("snapshot_rows", self._names.schema)
        if covered is None and not self._names.snapshot_existing:
            return None  # a Debezium table has no "pending": rows there were handled
        return cdc_query_with_names("snapshot_rows_of_table", self._names.schema,
                                    table=self._names.table)

    async def _publish_rows(
        self, conn: AsyncConnection[Any], request: SnapshotRequest, stopping: asyncio.Event
    ) -> bool:
        statement = self._statement(request.covered_xmin)
        if statement is None:
            return True
        async with conn.cursor(name="outbox_relay_snapshot", row_factory=dict_row) as cursor:
            for type_name in ("json", "jsonb"):  # JSON text, exactly as the stream gives it
                cursor.adapters.register_loader(type_name, TextLoader)
            await cursor.execute(statement, {"covered": request.covered_xmin})
            columns = [(column.name, column.type_code) for column in cursor.description or []]
            bound = self._mapping.bind(columns)
            while rows := await cursor.fetchmany(self._batch_size):
                items = [self._item(bound, row, request.position) for row in rows]
                if not await self._deliver([i for i in items if i is not None], stopping):
                    return False
        if self.published:
            log.info("snapshot: published %d outbox rows", self.published)
        return True

    async def _deliver(self, items: list[Item], stopping: asyncio.Event) -> bool:
        if not await self._publisher.deliver(items, stopping, lambda _: None):
            return False
        self.published += len(items)
        if self._mark_sent is not None:
            await self._mark_sent([i.id for i in items if isinstance(i, OutboxMessage)])
        return True

    def _item(self, bound: BoundMapping, row: dict[str, Any], position: int) -> Item | None:
        try:
            return bound.to_message(row, position)
        except MappingError as exc:
            ident = uuid.uuid5(ID_NAMESPACE, f"{self._names.table}:{row.get('id')}")
            return Unmappable(ident, orjson.dumps(row, default=str), str(exc), position)
