"""The relay's PostgreSQL connections read large results whole, and psycopg's timeouts
and cancellation still work through them."""

import asyncio
import hashlib

import psycopg
import psycopg.waiting
import pytest
from psycopg.waiting import Wait

from relay.db import open_connection
from relay.eager_reads import EagerReadConnection

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



def test_a_large_result_takes_far_fewer_turns_of_the_event_loop(db_dsn, monkeypatch):
    """Counts the waits to read that reach psycopg's wait (each one a loop round trip)."""
    reads = 0
    psycopg_wait = psycopg.waiting.wait_async

    def counted(gen):
        nonlocal reads
        try:
            wait = next(gen)
            while True:
                reads += wait == Wait.R
                wait = gen.send((yield wait))
        except StopIteration as done:
            return done.value

    async def counting_wait(gen, fileno, *args, **kwargs):
        return await psycopg_wait(counted(gen), fileno, *args, **kwargs)

    monkeypatch.setattr(psycopg.waiting, "wait_async", counting_wait)

    async def turns(connection_class):
        nonlocal reads
        async with await connection_class.connect(db_dsn, autocommit=True) as conn:
            reads = 0
            await (await conn.execute(LARGE, [5000])).fetchall()  # ~5 MB
            return reads

    plain = asyncio.run(turns(psycopg.AsyncConnection))
    eager = asyncio.run(turns(EagerReadConnection))
    assert plain > 100  # libpq's ~16 KB per read: ~300 waits
    assert eager < plain / 2, (eager, plain)
