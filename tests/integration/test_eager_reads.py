"""The relay's PostgreSQL connections read large results whole, and psycopg's timeouts
and cancellation still work through them."""

import asyncio
import hashlib

import pytest

from relay import eager_reads
from relay.db import open_connection
from relay.eager_reads import EagerReadConnection, read_what_arrived
from tests.support.counted import Counted

LARGE = "SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, %s) AS i"


async def connect(dsn):
    return await open_connection(dsn, duty="test", connect_timeout=5, settings={})


def test_a_result_of_megabytes_arrives_whole(db_dsn):
    async def scenario():
        conn = await connect(db_dsn)
        try:
            assert isinstance(conn, EagerReadConnection)
            cursor = await conn.execute(LARGE, [5000])  # ~5 MB
            return await cursor.fetchall()
        finally:
            await conn.close()

    rows = asyncio.run(scenario())
    assert rows == [(i, hashlib.md5(str(i).encode()).hexdigest() * 32) for i in range(1, 5001)]


def test_a_statement_cut_short_by_a_timeout_leaves_the_connection_usable(db_dsn):
    async def scenario():
        conn = await connect(db_dsn)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await conn.execute("SELECT pg_sleep(30)")
            cursor = await conn.execute("SELECT 1")
            return await cursor.fetchone()
        finally:
            await conn.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == (1,)




def test_every_wait_of_the_relays_connections_goes_through_the_eager_reader(
    db_dsn, monkeypatch
):
    """How many loop turns it saves depends on who is faster, the server or the relay
    (a 5 MB result: ~340 waits plain, 16-172 eager); that it is used does not."""
    wrapped = []

    def spy(gen, fileno):
        wrapped.append(fileno)
        return read_what_arrived(gen, fileno)

    monkeypatch.setattr(eager_reads, "read_what_arrived", spy)

    async def scenario():
        conn = await connect(db_dsn)
        try:
            await (await conn.execute(LARGE, [5000])).fetchall()
            return conn.pgconn.socket
        finally:
            await conn.close()

    socket = asyncio.run(scenario())
    assert wrapped and set(wrapped) == {socket}


def test_a_wait_with_nothing_to_read_sleeps_until_its_timeout_or_a_notification(db_dsn):
    """psycopg's own waits wake every 0.1 s (for Ctrl-C in synchronous code); an idle
    LISTEN connection would turn the event loop ten times a second for nothing."""

    async def scenario():
        conn = await connect(db_dsn)
        loop = asyncio.get_running_loop()
        try:
            await conn.execute("LISTEN eager_idle")
            loop.call_later = timers = Counted(loop.call_later)
            started = loop.time()
            heard = [n async for n in conn.notifies(timeout=1.0, stop_after=1)]
            waited = loop.time() - started
            del loop.call_later  # the loop's own again
            async with await connect(db_dsn) as other:
                await other.execute("NOTIFY eager_idle, 'x'")
            heard += [n.payload async for n in conn.notifies(timeout=10, stop_after=1)]
            return heard, waited, timers.calls, loop.time() - started
        finally:
            await conn.close()

    heard, waited, timers, total = asyncio.run(scenario())
    assert heard == ["x"] and 0.9 <= waited < 5 and total < 5
    assert timers <= 2  # one for the wait, not one every 0.1 s
