"""The publication and the slot, read and made on the leader connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay.cdc.frames import str_to_lsn
from relay.cdc.guardrails import SlotInfo
from relay.cdc.leader import Leadership
from relay.cdc.queries import cdc_query, cdc_query_with_names
from relay.cdc.settings import CdcNames, TableName
from relay.cdc.stream import ReplicationStream, SlotInUseError
from relay.errors import PermanentError, translate_db_error

log = logging.getLogger(__name__)


def slot_info_from_row(row: dict[str, Any]) -> SlotInfo:
    return SlotInfo(
        name=row["slot_name"],
        plugin=row["plugin"],
        slot_type=row["slot_type"],
        database=row["database"],
        active_pid=row["active_pid"],
        wal_status=row["wal_status"],
        confirmed_flush=_lsn(row["confirmed_flush"]),
        restart=_lsn(row["restart"]),
        lag_bytes=row["lag_bytes"],
        retained_bytes=row["retained_bytes"],
    )


def _lsn(text: str | None) -> int | None:
    return None if text is None else str_to_lsn(text)


async def read_slot(leadership: Leadership, names: CdcNames) -> SlotInfo | None:
    conn = await leadership.connection()
    try:
        async with conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(cdc_query("slot_info", names.schema), {"slot": names.slot})
            row = await cursor.fetchone()
    except psycopg.Error as exc:
        raise translate_db_error(exc, "reading the replication slot") from None
    return None if row is None else slot_info_from_row(row)


async def current_database(leadership: Leadership) -> str:
    conn = await leadership.connection()
    cursor = await conn.execute("SELECT current_database()")
    row = await cursor.fetchone()
    return str(row[0]) if row else ""


async def ensure_publication(leadership: Leadership, names: CdcNames) -> None:
    """Create the publication (inserts into the captured table) unless it exists; refuse
    one that exists without the table, rather than change someone else's publication."""
    conn = await leadership.connection()
    try:
        cursor = await conn.execute(
            cdc_query("publication_tables", names.schema), {"publication": names.publication}
        )
        rows = await cursor.fetchall()
        if not rows:
            await conn.execute(cdc_query_with_names(
                "create_publication", names.schema, table=names.table,
                publication=names.publication))
            log.info("created publication %s for inserts into %s", names.publication, names.table)
            return
    except psycopg.Error as exc:
        raise translate_db_error(exc, f"preparing publication {names.publication}") from None
    tables = {(schema, table) for _, schema, table in rows}
    if (names.table.schema, names.table.name) not in tables or not rows[0][0]:
        raise PermanentError(
            f"publication {names.publication} exists but does not publish inserts into "
            f"{names.table}; run ALTER PUBLICATION {names.publication} ADD TABLE "
            f"{names.table} (and publish = 'insert'), or choose another with --cdc-publication"
        )


async def drop_slot(leadership: Leadership, names: CdcNames, slot: SlotInfo) -> None:
    if slot.active_pid is not None:
        await leadership.end_session(slot.active_pid)
    await leadership.execute(cdc_query("drop_slot", names.schema), {"slot": slot.name})
    log.warning("dropped replication slot %s", slot.name)


async def ensure_shared_publication(
    leadership: Leadership, publication: str, tables: Sequence[TableName]
) -> None:
    """Create the publication a database's outboxes share, or add the tables it lacks;
    refuse one that publishes no inserts, rather than change someone else's publication."""
    schema = tables[0].schema
    conn = await leadership.connection()
    try:
        cursor = await conn.execute(cdc_query("publication_tables", schema),
                                    {"publication": publication})
        rows = await cursor.fetchall()
        if rows and not rows[0][0]:
            raise PermanentError(
                f"publication {publication} exists but does not publish inserts; choose "
                "another with --cdc-publication")
        present = {(row[1], row[2]) for row in rows}
        for table in tables:
            if (table.schema, table.name) in present:
                continue
            name = "add_publication_table" if present else "create_publication"
            await conn.execute(cdc_query_with_names(name, schema, table=table,
                                                    publication=publication))
            present.add((table.schema, table.name))
            log.info("publication %s now publishes inserts into %s", publication, table)
    except psycopg.Error as exc:
        raise translate_db_error(exc, f"preparing publication {publication}") from None


START_ATTEMPTS = 5


async def start_streaming(
    stream: ReplicationStream, leadership: Leadership, names: CdcNames, start_lsn: int
) -> None:
    """START_REPLICATION from ``start_lsn``: the relay's saved position, which may be
    past the slot's (PostgreSQL moves a slot back to it; skipped commits were
    published). A walsender left over from a previous leader is ended."""
    for attempt in range(START_ATTEMPTS):
        try:
            await stream.start(names.slot, names.publication, start_lsn)
            return
        except SlotInUseError:
            if attempt == START_ATTEMPTS - 1:
                raise
            slot = await read_slot(leadership, names)
            if slot is not None and slot.active_pid is not None:
                log.warning("slot %s is still streamed by walsender %d (a previous "
                            "leader); ending that session", names.slot, slot.active_pid)
                await leadership.end_session(slot.active_pid)
            await asyncio.sleep(0.1 * (attempt + 1))
