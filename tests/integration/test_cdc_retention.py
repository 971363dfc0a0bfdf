"""CDC retention's pace (relay.cdc.retention): a pass when rows can be deleted, not on
every tick of an idle outbox; rows of an outbox that went idle still go once aged."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from relay import enqueue
from relay.cdc import retention, session
from tests.support.cdc_relays import RunningCdcRelay, cdc_config, eventually
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def quick_ticks(monkeypatch):
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.2)
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.3)  # the watermark moves sooner
    # Far beyond the tests: only the pace itself may start a pass.
    monkeypatch.setattr(retention, "IDLE_RETENTION_EVERY", 3600.0)


def count_passes(monkeypatch):
    passes = {"n": 0}
    purge = retention.purge_published

    async def counted(*args, **kwargs):
        passes["n"] += 1
        return await purge(*args, **kwargs)

    monkeypatch.setattr(retention, "purge_published", counted)
    return passes


def write(dsn, count):
    with psycopg.connect(dsn) as conn:
        for n in range(count):
            with conn.transaction():
                enqueue(conn, topic="orders", key=f"k{n % 5}", payload={"n": n})


def rows_left(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0]


def test_an_idle_outbox_is_not_purged_on_every_tick(db_dsn, monkeypatch):
    passes = count_passes(monkeypatch)
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, retention=0)) as running:
            await running.streaming()
            await asyncio.sleep(3)  # 15 ticks
            return passes["n"]

    assert asyncio.run(scenario()) <= 2  # the first pass, for what an earlier run left


def test_rows_of_an_outbox_that_went_idle_are_deleted_once_they_age_out(db_dsn, monkeypatch):
    passes = count_passes(monkeypatch)
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, retention=2)) as running:
            await running.streaming()
            await asyncio.to_thread(write, db_dsn, 20)
            await eventually(lambda: len(running.connector.published) >= 20, 10, "events")
            kept = await asyncio.to_thread(rows_left, db_dsn)  # younger than the retention
            await eventually(lambda: rows_left(db_dsn) == 0, 15, "retention to delete them")
            after = passes["n"]
            await asyncio.sleep(2)  # idle again, nothing left: no more passes
            return kept, passes["n"] - after

    kept, passes_while_idle = asyncio.run(scenario())
    assert kept == 20
    assert passes_while_idle <= 1
