"""Several CDC relays on one database: one streams, the others take over when it stops."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.cdc.relay import CdcRelay
from tests.integration.test_cdc_stream import write
from tests.support.cdc_relays import (
    FAST_CDC,
    RunningCdcRelay,
    ThreadedCdcRelay,
    cdc_config,
    eventually,
    slot_position,
)
from tests.support.fakes import InMemoryConnector
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration
TTL = FAST_CDC.takeover_ttl


def test_one_relay_streams_and_a_standby_takes_over_when_it_dies(db_dsn):
    install_outbox(db_dsn)

    async def scenario():
        first, second = RunningCdcRelay(cdc_config(db_dsn)), RunningCdcRelay(cdc_config(db_dsn))
        await first.__aenter__()
        await first.streaming()
        await second.__aenter__()
        await asyncio.sleep(TTL / 2)
        assert not second.relay.streaming.is_set()  # a standby while the first streams
        before = await asyncio.to_thread(write, db_dsn, 50)
        await eventually(lambda: set(before) <= set(first.published_ids()), 10, "the first")
        await first.crash()  # its connections close: PostgreSQL drops its lock at once
        took = await eventually(second.relay.streaming.is_set, 10, "the takeover")
        after = await asyncio.to_thread(write, db_dsn, 50, start=50)
        await eventually(lambda: set(after) <= set(second.published_ids()), 10, "the second")
        await second.stop()
        return took, before, after, first.published_ids(), second.published_ids()

    took, before, after, by_first, by_second = asyncio.run(scenario())
    assert took < TTL  # a dead relay is replaced within a standby poll or two
    assert set(before) <= set(by_first) and set(after) <= set(by_second)


def test_a_frozen_leader_is_fenced_and_replaced_within_the_takeover_bound(db_dsn):
    install_outbox(db_dsn)
    frozen = ThreadedCdcRelay(cdc_config(db_dsn))
    frozen.start()
    try:
        asyncio.run(_freeze_and_take_over(db_dsn, frozen))
    finally:
        frozen.stop()


async def _freeze_and_take_over(db_dsn, frozen):
    await eventually(frozen.streaming, 20, "the first relay to stream")
    async with RunningCdcRelay(cdc_config(db_dsn)) as standby:
        await asyncio.sleep(TTL / 2)
        frozen.freeze()  # like SIGSTOP: its connections, lock and walsender stay
        started = time.monotonic()
        ids = await asyncio.to_thread(write, db_dsn, 30)
        await eventually(standby.relay.streaming.is_set, 15, "the takeover")
        took = time.monotonic() - started
        assert took < TTL * 1.25 + 1.5  # lease expiry + a standby poll + ending sessions
        await eventually(lambda: set(ids) <= set(standby.published_ids()), 10, "the events")
        assert frozen.connector.published == []
        slot = await asyncio.to_thread(slot_position, db_dsn)
        frozen.thaw()  # it wakes up deposed: its lease ran out by its own clock too
        more = await asyncio.to_thread(write, db_dsn, 10, start=30)
        await eventually(lambda: set(more) <= set(standby.published_ids()), 10, "more events")
        await asyncio.sleep(0.5)
        assert frozen.connector.published == []  # it never published after waking
        assert slot["active_pid"] is not None


def test_a_relay_given_its_cdc_settings_ends_a_frozen_transaction_within_their_ttl(db_dsn):
    """A frozen leader's set-aside transaction holds the lock a new leader waits for:
    PostgreSQL ends it after the takeover TTL the relay runs with, not the default's."""
    install_outbox(db_dsn)
    relay = CdcRelay(cdc_config(db_dsn), InMemoryConnector(), FAST_CDC)

    async def shown() -> str:
        session = relay.aside._session
        conn = await session.connection()
        try:
            cursor = await conn.execute("SHOW idle_in_transaction_session_timeout")
            row = await cursor.fetchone()
            return str(row[0]) if row else ""
        finally:
            await session.close()

    assert asyncio.run(shown()) == f"{TTL:g}s"
