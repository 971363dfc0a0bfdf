"""CDC mode against real PostgreSQL (wal_level=logical), with the in-memory broker."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest

from relay import enqueue
from relay.cdc import retention, session
from relay.model import permanent
from tests.support.cdc_relays import (
    FAST_CDC,
    RunningCdcRelay,
    cdc_config,
    eventually,
    slot_position,
    wal_position,
)
from tests.support.fakes import InMemoryConnector
from tests.support.relays import install_outbox

pytestmark = pytest.mark.integration


def write(dsn, count, *, keys=10, topic="orders", per_transaction=1, start=0):
    ids = []
    with psycopg.connect(dsn) as conn:
        for first in range(start, start + count, per_transaction):
            with conn.transaction():
                for n in range(first, min(first + per_transaction, start + count)):
                    ids.append(enqueue(conn, topic=topic, key=f"k{n % keys}", payload={"n": n}))
    return ids


def first_occurrences(messages):
    return list(dict.fromkeys(message.id for message in messages))


def test_concurrent_writers_arrive_in_commit_order_each_key_in_its_order(db_dsn):
    install_outbox(db_dsn)

    def writer(number, written):
        with psycopg.connect(db_dsn) as conn:
            for n in range(60):
                with conn.transaction():
                    for part in range(3):
                        written.append(enqueue(conn, topic="orders", key=f"w{number}",
                                               payload={"n": n, "part": part}))

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, batch_size=50)) as running:
            await running.streaming()
            written: list = []
            threads = [threading.Thread(target=writer, args=(w, written)) for w in range(4)]
            for thread in threads:
                thread.start()
            await asyncio.to_thread(lambda: [t.join() for t in threads])
            await eventually(lambda: len(running.connector.published) >= 720, 20, "720 events")
            return written, running.connector.published

    written, published = asyncio.run(scenario())
    assert sorted(m.id for m in published) == sorted(written)  # each exactly once
    positions = [m.position for m in published]
    assert positions == sorted(positions)  # commit order across writers
    by_key = defaultdict(list)
    for message in published:
        body = json.loads(message.payload)
        by_key[message.key].append((body["n"], body["part"]))
    for steps in by_key.values():  # each writer's events in the order it wrote them
        assert steps == sorted(steps)


def test_insert_then_delete_and_emitted_events_are_published(db_dsn):
    install_outbox(db_dsn)

    def produce():
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            with conn.transaction():  # the "empty outbox": the table never grows
                conn.execute("SELECT outbox.enqueue('orders', 'a', '{\"step\": 1}')")
                conn.execute("DELETE FROM outbox.messages")
            conn.execute("SELECT outbox.emit('orders', 'a', '{\"step\": 2}', "
                         "'{\"trace\": \"t-1\", \"n\": 3}')")
            conn.execute("SELECT outbox.emit_binary('images', 'b', '\\x89504e47'::bytea, "
                         "'{}', 'image/png')")
            conn.execute("SELECT outbox.emit('orders', 'a', NULL)")  # a tombstone
            with conn.transaction():  # rolled back: never published
                conn.execute("SELECT outbox.emit('orders', 'a', '{\"step\": 99}')")
                raise psycopg.Rollback()
            return conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0]

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            rows_left = await asyncio.to_thread(produce)
            await eventually(lambda: len(running.connector.published) >= 4, 10, "4 events")
            await asyncio.sleep(0.3)  # nothing else may follow
            return rows_left, running.connector.published

    rows_left, published = asyncio.run(scenario())
    assert rows_left == 0
    assert [(m.topic, m.key, m.payload) for m in published] == [
        ("orders", "a", b'{"step": 1}'),
        ("orders", "a", b'{"step": 2}'),
        ("images", "b", b"\x89PNG"),
        ("orders", "a", None),
    ]
    assert published[1].headers == {"trace": "t-1", "n": "3"}
    assert published[2].content_type == "image/png"


def test_each_event_carries_its_transactions_commit_time(db_dsn):
    """The commit -> confirm latency starts at the commit timestamp pgoutput sends with
    BEGIN, not at created_at: a transaction open for a second reads a second long
    from created_at and not at all from its commit."""
    install_outbox(db_dsn)

    def produce():
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            with conn.transaction():
                enqueue(conn, topic="orders", key="a", payload={"n": 1})
                conn.execute("SELECT pg_sleep(1)")
            return conn.execute("SELECT now()").fetchone()[0]  # a transaction after it

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            after = await asyncio.to_thread(produce)
            await eventually(lambda: running.connector.published, 10, "the event")
            return after, running.connector.published

    after, [message] = asyncio.run(scenario())
    assert message.created_at is not None and message.committed_at is not None
    assert message.committed_at - message.created_at >= timedelta(seconds=1)
    assert message.committed_at <= after


def test_only_an_event_soon_after_a_publish_waits_out_the_linger(db_dsn):
    """The linger lets a transaction that came right behind the last publish wait for the
    ones behind it; a lone one after a quiet spell of more than two lingers has nobody
    behind it and goes at once, and events that arrived while a batch was with the
    broker have waited already."""
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario():
        settings = replace(FAST_CDC, linger=1.0)
        async with RunningCdcRelay(cdc_config(db_dsn), connector, settings) as running:
            await running.streaming()
            await asyncio.sleep(2.5)  # quiet for more than two lingers
            lone_written = time.monotonic()
            await asyncio.to_thread(write, db_dsn, 1)
            await eventually(lambda: connector.batches >= 1, 10, "the lone event")
            lone_waited = time.monotonic() - lone_written
            await eventually(lambda: len(connector.published) == 1, 10, "its publish")
            connector.delay = 1.0  # the next publish: 1 s
            behind_written = time.monotonic()
            await asyncio.to_thread(write, db_dsn, 1, start=1)  # right after that publish
            await eventually(lambda: connector.batches >= 2, 10, "the event behind")
            behind_lingered = time.monotonic() - behind_written
            connector.delay = 0.0  # the publish after it is instant
            during_written = time.monotonic()
            await asyncio.to_thread(write, db_dsn, 1, start=2)  # while the second publishes
            await eventually(lambda: len(connector.published) == 3, 10, "the third")
            return lone_waited, behind_lingered, time.monotonic() - during_written

    lone_waited, behind_lingered, during_waited = asyncio.run(scenario())
    assert lone_waited < 0.9  # after a quiet spell: no linger (1 s)
    assert behind_lingered >= 0.9  # right behind a publish: the linger
    # The rest of the second publish (< 1 s), then at once; with a linger ~2 s.
    assert during_waited < 1.5


def test_pending_rows_are_published_first_then_the_stream_without_gap(db_dsn):
    install_outbox(db_dsn)
    already_sent = write(db_dsn, 20)
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # as a polling relay left them
        conn.execute("UPDATE outbox.messages SET sent_at = now()")
    pending = write(db_dsn, 300, per_transaction=7, start=20)
    keep_writing = threading.Event()
    during: list = []

    def writer():
        n = 1000
        while not keep_writing.is_set():
            during.extend(write(db_dsn, 5, start=n))
            n += 5

    async def scenario():
        thread = threading.Thread(target=writer)
        thread.start()  # writes go on while the slot is created and the snapshot read
        try:
            async with RunningCdcRelay(cdc_config(db_dsn, batch_size=64)) as running:
                await running.streaming()
                await asyncio.sleep(0.5)
                keep_writing.set()
                await asyncio.to_thread(thread.join)
                total = len(pending) + len(during)
                await eventually(lambda: len(running.connector.published) >= total, 20,
                                 "the snapshot and the stream")
                await asyncio.sleep(0.2)
                return running.published_ids()
        finally:
            keep_writing.set()

    published = asyncio.run(scenario())
    assert set(published) == set(pending) | set(during)  # no gap, nothing sent twice...
    assert len(published) == len(set(published))  # ...because the snapshot was exported
    assert set(published).isdisjoint(already_sent)
    assert published[: len(pending)] == pending  # the backlog first, in outbox order
    with psycopg.connect(db_dsn) as conn:
        unsent = conn.execute("SELECT count(*) FROM outbox.messages WHERE id = ANY(%s) "
                              "AND sent_at IS NULL", (pending,)).fetchone()[0]
    assert unsent == 0  # snapshot rows are marked sent, so status and retention see them


def test_a_broker_outage_holds_the_position_then_everything_arrives_in_order(db_dsn):
    install_outbox(db_dsn)
    connector = InMemoryConnector()

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, batch_size=10), connector) as running:
            await running.streaming()
            await eventually(lambda: slot_position(db_dsn).get("confirmed"), 5, "a position")
            connector.down = True
            before = await asyncio.to_thread(wal_position, db_dsn)
            ids = await asyncio.to_thread(write, db_dsn, 40, per_transaction=4)
            await asyncio.sleep(1.5)  # retries and keepalives go on meanwhile
            held = await asyncio.to_thread(slot_position, db_dsn)
            connector.down = False
            await eventually(lambda: set(ids) <= set(running.published_ids()), 20, "recovery")
            last_commit = max(m.position for m in running.connector.published)
            await eventually(lambda: slot_position(db_dsn)["confirmed"] > last_commit, 15,
                             "the position to move past the events")
            return before, held, ids, running.connector.published

    before, held, ids, published = asyncio.run(scenario())
    assert held["confirmed"] <= before  # never past an unconfirmed message
    assert first_occurrences(published) == ids
    with psycopg.connect(db_dsn) as conn:  # an outage costs no attempt, holds no key
        counted = conn.execute(
            "SELECT (SELECT count(*) FROM outbox.messages WHERE set_aside_at IS NOT NULL),"
            " (SELECT count(*) FROM outbox.key_holds), (SELECT count(*) FROM outbox.dead_letters)"
        ).fetchone()
    assert counted == (0, 0, 0)


def test_a_restart_after_an_abrupt_stop_loses_nothing(db_dsn):
    install_outbox(db_dsn)
    slow = InMemoryConnector(delay=0.02)

    async def scenario():
        first = RunningCdcRelay(cdc_config(db_dsn, batch_size=20), slow)
        await first.__aenter__()
        await first.streaming()
        ids = await asyncio.to_thread(write, db_dsn, 400, per_transaction=3)
        await eventually(lambda: len(slow.published) >= 30, 20, "some progress")
        early = slow.published[20].position
        await eventually(lambda: slot_position(db_dsn)["confirmed"] > early, 20,
                         "a confirmed position past some events")
        await first.crash()  # mid-stream, with batches in flight
        async with RunningCdcRelay(cdc_config(db_dsn, batch_size=100)) as second:
            await eventually(
                lambda: set(ids) <= {m.id for m in slow.published} | set(second.published_ids()),
                20, "everything after the restart")
            return ids, slow.published, second.connector.published

    ids, before, after = asyncio.run(scenario())
    assert set(ids) <= {m.id for m in before} | {m.id for m in after}
    duplicates = len(before) + len(after) - len(ids)
    assert duplicates < len(before)  # only what was not yet confirmed came again
    assert first_occurrences(before + after) == ids


def test_a_refused_message_is_parked_in_the_outbox_table_and_the_rest_flows(db_dsn):
    install_outbox(db_dsn)
    connector = InMemoryConnector(rules=[
        lambda m: permanent("message too large") if m.topic == "poison" else None])

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn), connector) as running:
            await running.streaming()
            ids = await asyncio.to_thread(write, db_dsn, 5)
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                conn.execute("SELECT outbox.emit('poison', 'k1', '{\"big\": true}')")
            ids += await asyncio.to_thread(write, db_dsn, 5, start=5)
            await eventually(lambda: len(running.connector.published) >= 10, 10, "the rest")
            return ids, running.published_ids()

    ids, published = asyncio.run(scenario())
    assert published == ids
    assert parked_messages(db_dsn) == [("poison", "k1", {"big": True}, "message too large")]


def parked_messages(dsn):
    """Where the dead-letter tools look: ``dead_letters`` once migration 0003 moved parked
    rows there (a trigger moves them), parked rows of the outbox before that."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('outbox.dead_letters')").fetchone()[0]:
            statement = "SELECT topic, key, payload, last_error FROM outbox.dead_letters"
        else:
            statement = ("SELECT topic, key, payload, last_error FROM outbox.messages "
                         "WHERE parked_at IS NOT NULL")
        return conn.execute(statement).fetchall()


def rows_left(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM outbox.messages").fetchone()[0]


def count_retention_rounds(monkeypatch):
    """Count the rounds of CDC retention, so a test can tell it ran (and spared rows)."""
    rounds = {"n": 0}
    purge = retention.purge_published

    async def counted(*args, **kwargs):
        deleted = await purge(*args, **kwargs)
        rounds["n"] += 1
        return deleted

    monkeypatch.setattr(retention, "purge_published", counted)
    return rounds


def test_retention_deletes_captured_rows_once_the_watermark_covers_them(db_dsn, monkeypatch):
    monkeypatch.setattr(session, "IDLE_SAVE_INTERVAL", 0.3)
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.2)
    # Nothing is published while the broker is down: only a look finds the rows aged
    # out and gives the passes their chance to (wrongly) delete them.
    monkeypatch.setattr(retention, "IDLE_RETENTION_EVERY", 0.2)
    rounds = count_retention_rounds(monkeypatch)
    install_outbox(db_dsn)
    connector = InMemoryConnector(down=True)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, retention=0), connector) as running:
            await running.streaming()
            ids = await asyncio.to_thread(write, db_dsn, 30, per_transaction=5)
            seen = rounds["n"]
            await eventually(lambda: rounds["n"] >= seen + 3, 10, "retention rounds")
            unpublished_left = await asyncio.to_thread(rows_left, db_dsn)
            connector.down = False
            await eventually(lambda: len(running.connector.published) >= 30, 10, "events")
            await eventually(lambda: rows_left(db_dsn) == 0, 15, "retention to delete them")
            return ids, unpublished_left, running.published_ids()

    ids, unpublished_left, published = asyncio.run(scenario())
    assert unpublished_left == 30  # the watermark did not cover them: nothing deleted
    assert first_occurrences_of(published) == ids  # deleted only after being published


def test_retention_deletes_the_rows_the_snapshot_published(db_dsn, monkeypatch):
    """Rows pending when CDC first starts are published from the table and marked sent;
    with --retention 0 they must go too, not stay forever."""
    monkeypatch.setattr(retention, "RETENTION_EVERY", 0.2)
    install_outbox(db_dsn)
    ids = write(db_dsn, 30)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn, retention=0)) as running:
            await running.streaming()
            await eventually(lambda: len(running.connector.published) >= 30, 10, "the rows")
            await eventually(lambda: rows_left(db_dsn) == 0, 15, "retention to delete them")
            return running.published_ids()

    assert asyncio.run(scenario()) == ids


def test_the_relay_comes_back_after_postgresql_restarts(db_dsn, postgres):
    if postgres is None:
        pytest.skip("needs the local throwaway PostgreSQL, which this test restarts")
    install_outbox(db_dsn)

    async def scenario():
        async with RunningCdcRelay(cdc_config(db_dsn)) as running:
            await running.streaming()
            before = await asyncio.to_thread(write, db_dsn, 20)
            await eventually(lambda: set(before) <= set(running.published_ids()), 10, "before")
            await asyncio.to_thread(postgres.stop, "fast")
            await asyncio.to_thread(postgres.start)
            after = await asyncio.to_thread(write, db_dsn, 20, start=20)
            await eventually(lambda: set(after) <= set(running.published_ids()), 30,
                             "the events written after the restart")
            return before + after, running.published_ids()

    ids, published = asyncio.run(scenario())
    assert first_occurrences_of(published) == ids


def first_occurrences_of(ids):
    return list(dict.fromkeys(ids))
