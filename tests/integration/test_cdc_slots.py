"""The slot's WAL: hygiene when idle, and loud recovery when the slot is lost."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from relay.cdc import retention, session
from relay.migrations import migrate
from tests.integration.test_cdc_stream import rows_left, write
from tests.support.cdc_relays import RunningCdcRelay, cdc_config, eventually, slot_position
from tests.support.relays import install_outbox
from tests.support.services import ThrowawayPostgres

pytestmark = pytest.mark.integration
MB = 1 << 20


def write_elsewhere(dsn, megabytes):
    """About ``megabytes`` of WAL into a table the publication does not cover."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS filler (id bigint, body text)")
        for _ in range(megabytes // 10):  # ~10 MB of WAL per statement
            conn.execute("INSERT INTO filler SELECT g, repeat(md5(g::text), 30) "
                         "FROM generate_series(1, 10000) g")
        conn.execute("CHECKPOINT")  # logs running transactions: a restart point to move to


def test_an_idle_relay_lets_the_slot_follow_other_tables_writes(db_dsn, monkeypatch):
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.5)
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            start = await asyncio.to_thread(slot_position, db_dsn)
            await asyncio.to_thread(write_elsewhere, db_dsn, 100)
            written = (await asyncio.to_thread(slot_position, db_dsn))["current"] - start["current"]
            await eventually(lambda: slot_position(db_dsn)["retained"] < 16 * MB, 20,
                             "the slot to let go of the WAL")
            return written, await asyncio.to_thread(slot_position, db_dsn)

    written, slot = asyncio.run(scenario())
    assert written >= 100_000_000  # ~100 MB of WAL
    assert slot["retained"] < 16 * MB


def snapshot_connections(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity "
                            "WHERE application_name LIKE '%%cdc-snapshot%%'").fetchone()[0]


def test_the_snapshot_lets_its_connection_go_once_the_pending_rows_are_published(db_dsn):
    install_outbox(db_dsn)
    pending = write(db_dsn, 20)  # before the slot exists: the first start publishes them

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            await eventually(lambda: set(pending) <= set(running.published_ids()), 10,
                             "the pending rows")
            return await asyncio.to_thread(snapshot_connections, db_dsn)

    assert asyncio.run(scenario()) == 0


def test_a_dropped_slot_is_reported_and_recreated_without_losing_outbox_rows(
    db_dsn, caplog, monkeypatch
):
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.3)
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.2)
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as first:
            await first.streaming()
            early = await asyncio.to_thread(write, db_dsn, 30)
            await eventually(lambda: set(early) <= set(first.published_ids()), 10, "early")
        missed = await asyncio.to_thread(write, db_dsn, 40, start=30)  # while no relay runs
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot('outbox_relay_outbox')")
        with caplog.at_level(logging.ERROR, logger="relay.cdc"):
            async with RunningCdcRelay(cdc_config(db_dsn)) as second:
                await second.streaming()
                later = await asyncio.to_thread(write, db_dsn, 10, start=70)
                await eventually(lambda: set(missed + later) <= set(second.published_ids()),
                                 10, "the missed rows and the new ones")
                # re-published from the table, they are then deleted like the rest
                await eventually(lambda: rows_left(db_dsn) == 0, 15, "retention (0)")
                return early, missed, later, second.published_ids()

    early, missed, later, republished = asyncio.run(scenario())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("is missing" in message for message in errors)
    recovered = [i for i in republished if i in set(missed)]
    assert recovered == missed  # each once, in outbox order
    assert republished.index(later[0]) > republished.index(missed[-1])  # then the stream
    # rows the watermark already covered are not published again; the rest may be
    assert set(republished) <= set(early) | set(missed) | set(later)


def test_a_publication_younger_than_its_slot_gets_a_new_slot_not_a_retry_loop(
    db_dsn, caplog, monkeypatch
):
    """pgoutput reads the publication as of each change it decodes: changes written while
    the publication did not exist (dropped, then made again) can never be read from that
    slot."""
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.3)
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as first:
            await first.streaming()
            early = await asyncio.to_thread(write, db_dsn, 10)
            await eventually(lambda: set(early) <= set(first.published_ids()), 10, "early")
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("DROP PUBLICATION outbox_relay_outbox")
        missed = await asyncio.to_thread(write, db_dsn, 20, start=10)  # no publication
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("CREATE PUBLICATION outbox_relay_outbox FOR TABLE outbox.messages "
                         "WITH (publish = 'insert')")
        with caplog.at_level(logging.WARNING, logger="relay.cdc"):
            async with RunningCdcRelay(cdc_config(db_dsn)) as second:
                await eventually(lambda: set(missed) <= set(second.published_ids()), 20,
                                 "the rows written after the publication was made again")
                later = await asyncio.to_thread(write, db_dsn, 5, start=30)
                await eventually(lambda: set(later) <= set(second.published_ids()), 10,
                                 "new rows, from the new slot")
        return missed, later

    asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot be decoded with publication" in m for m in messages), messages
    # One failed start, then the new slot: no retry loop at the base delay.
    assert sum("CDC streaming stopped" in m for m in messages) <= 2, messages


def test_an_invalidated_slot_is_reported_and_recreated_without_losing_outbox_rows(caplog):
    settings = {"max_slot_wal_keep_size": "32MB", "max_wal_size": "64MB",
                "min_wal_size": "32MB", "wal_keep_size": "0"}
    with ThrowawayPostgres(settings=settings) as server:
        dsn = server.create_database("invalidated")
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrate(conn, "outbox")
        asyncio.run(_invalidate_and_recover(dsn, caplog))


async def _invalidate_and_recover(dsn, caplog):
    async with RunningCdcRelay(cdc_config(dsn)) as first:
        await first.streaming()
        await asyncio.to_thread(write, dsn, 10)
        await eventually(lambda: len(first.connector.published) >= 10, 10, "first events")
    missed = await asyncio.to_thread(write, dsn, 25, start=10)
    await asyncio.to_thread(write_elsewhere, dsn, 100)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        status = conn.execute("SELECT wal_status FROM pg_replication_slots").fetchone()[0]
    assert status == "lost"
    with caplog.at_level(logging.ERROR, logger="relay.cdc"):
        async with RunningCdcRelay(cdc_config(dsn)) as second:
            await second.streaming()
            later = await asyncio.to_thread(write, dsn, 5, start=35)
            await eventually(lambda: set(missed + later) <= set(second.published_ids()), 10,
                             "the missed rows and the new ones")
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("wal_status=lost" in message for message in errors)
